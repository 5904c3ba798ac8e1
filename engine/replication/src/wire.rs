//! One PostgreSQL connection on the frontend/backend protocol: start-up, TLS, authentication,
//! simple queries, and the raw frame reader/writer that streaming uses.

use std::pin::Pin;
use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::sasl::{self, ChannelBinding, ScramSha256};
use postgres_protocol::message::{backend, frontend};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;

use crate::{ConnectionConfig, ReplicationError, SslMode};

/// Largest backend message we accept; PostgreSQL itself caps messages at 1 GiB.
const MAX_FRAME: usize = 1 << 30;

pub(crate) trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}
pub(crate) type BoxIo = Pin<Box<dyn Io>>;

/// One row of a simple-query result: text values, `None` for NULL.
#[derive(Debug, Clone, PartialEq)]
pub struct SimpleRow(pub Vec<Option<String>>);

impl SimpleRow {
    pub fn get(&self, i: usize) -> Option<&str> {
        self.0.get(i).and_then(|v| v.as_deref())
    }
}

/// A started connection in the idle state.
pub struct Connection {
    pub(crate) reader: FrameReader,
    pub(crate) writer: WriteHalf<BoxIo>,
    pub(crate) out: BytesMut,
    server_version: Option<String>,
}

/// Whether to open a walsender (`replication=database`) or an ordinary session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Replication,
    Normal,
}

impl Connection {
    /// Connects, negotiates TLS, authenticates and waits for ReadyForQuery.
    pub async fn connect(
        cfg: &ConnectionConfig,
        mode: Mode,
    ) -> Result<Connection, ReplicationError> {
        let deadline = cfg.connect_timeout;
        tokio::time::timeout(deadline, Self::connect_inner(cfg, mode))
            .await
            .map_err(|_| {
                ReplicationError::Timeout(format!(
                    "capture connection to {} took longer than {deadline:?}",
                    cfg.target()
                ))
            })?
    }

    async fn connect_inner(
        cfg: &ConnectionConfig,
        mode: Mode,
    ) -> Result<Connection, ReplicationError> {
        let io: BoxIo = if cfg.is_unix_socket() {
            #[cfg(unix)]
            {
                let path = cfg.socket_path();
                let sock = tokio::net::UnixStream::connect(&path)
                    .await
                    .map_err(|source| ReplicationError::Connect {
                        addr: path.display().to_string(),
                        source,
                    })?;
                Box::pin(sock)
            }
            #[cfg(not(unix))]
            {
                return Err(ReplicationError::Setup(
                    "unix-domain sockets are not available on this platform".into(),
                ));
            }
        } else {
            let addr = if cfg.host.contains(':') {
                format!("[{}]:{}", cfg.host, cfg.port)
            } else {
                format!("{}:{}", cfg.host, cfg.port)
            };
            let tcp =
                TcpStream::connect(&addr)
                    .await
                    .map_err(|source| ReplicationError::Connect {
                        addr: addr.clone(),
                        source,
                    })?;
            tcp.set_nodelay(true)?;
            match cfg.sslmode {
                SslMode::Disable => Box::pin(tcp),
                SslMode::Require | SslMode::VerifyFull => Box::pin(negotiate_tls(tcp, cfg).await?),
            }
        };
        let (r, w) = tokio::io::split(io);
        let mut conn = Connection {
            reader: FrameReader::new(r),
            writer: w,
            out: BytesMut::with_capacity(1024),
            server_version: None,
        };
        match conn.startup(cfg, mode).await {
            Ok(()) => Ok(conn),
            // The walsender refuses roles without REPLICATION before any SQL can run.
            Err(ReplicationError::Server { code, .. }) if code == "42501" && mode == Mode::Replication => {
                Err(ReplicationError::Setup(format!(
                    "role {:?} may not open a replication connection: run ALTER ROLE {} WITH REPLICATION",
                    cfg.user,
                    crate::setup::quote_ident(&cfg.user)?
                )))
            }
            Err(e) => Err(e),
        }
    }

    /// The server's `server_version` parameter.
    pub fn server_version(&self) -> Option<&str> {
        self.server_version.as_deref()
    }

    async fn startup(
        &mut self,
        cfg: &ConnectionConfig,
        mode: Mode,
    ) -> Result<(), ReplicationError> {
        let application_name = lily_pg::Role::Capture.application_name(&cfg.application_name);
        // Session settings fix the text formats the batch builder parses.
        let mut params: Vec<(&str, &str)> = vec![
            ("user", cfg.user.as_str()),
            ("database", cfg.dbname.as_str()),
            ("application_name", application_name.as_str()),
            ("client_encoding", "UTF8"),
            ("DateStyle", "ISO"),
            ("TimeZone", "UTC"),
            ("extra_float_digits", "3"),
            ("bytea_output", "hex"),
            ("IntervalStyle", "iso_8601"),
        ];
        if mode == Mode::Replication {
            params.push(("replication", "database"));
        }
        frontend::startup_message(params.iter().copied(), &mut self.out)?;
        self.flush().await?;
        self.authenticate(cfg).await?;
        loop {
            match self.read_message().await? {
                backend::Message::ReadyForQuery(_) => return Ok(()),
                backend::Message::ParameterStatus(p) => {
                    if p.name().ok() == Some("server_version") {
                        self.server_version = p.value().ok().map(str::to_string);
                    }
                }
                backend::Message::BackendKeyData(_) | backend::Message::NoticeResponse(_) => {}
                backend::Message::ErrorResponse(e) => return Err(server_error(e)),
                _ => {
                    return Err(ReplicationError::Protocol(
                        "unexpected message during start-up".into(),
                    ))
                }
            }
        }
    }

    async fn authenticate(&mut self, cfg: &ConnectionConfig) -> Result<(), ReplicationError> {
        let auth_err = |reason: &str| ReplicationError::Auth {
            user: cfg.user.clone(),
            reason: reason.to_string(),
        };
        let secret = cfg.password_for();
        let password = secret.expose().as_bytes();
        loop {
            match self.read_message().await? {
                backend::Message::AuthenticationOk => return Ok(()),
                backend::Message::AuthenticationCleartextPassword => {
                    if cfg.sslmode == SslMode::Disable {
                        tracing::warn!("Server asked for a cleartext password over an unencrypted connection.");
                    }
                    frontend::password_message(password, &mut self.out)?;
                    self.flush().await?;
                }
                backend::Message::AuthenticationMd5Password(body) => {
                    let hash = postgres_protocol::authentication::md5_hash(
                        cfg.user.as_bytes(),
                        password,
                        body.salt(),
                    );
                    frontend::password_message(hash.as_bytes(), &mut self.out)?;
                    self.flush().await?;
                }
                backend::Message::AuthenticationSasl(body) => {
                    let mut mechanisms = body.mechanisms();
                    let mut has_scram = false;
                    while let Some(m) = fallible_next(&mut mechanisms)? {
                        has_scram |= m == sasl::SCRAM_SHA_256;
                    }
                    if !has_scram {
                        return Err(auth_err("server offers no SASL mechanism we support (SCRAM-SHA-256)"));
                    }
                    let mut scram = ScramSha256::new(password, ChannelBinding::unsupported());
                    frontend::sasl_initial_response(sasl::SCRAM_SHA_256, scram.message(), &mut self.out)?;
                    self.flush().await?;
                    match self.read_message().await? {
                        backend::Message::AuthenticationSaslContinue(b) => {
                            scram.update(b.data()).map_err(|e| auth_err(&e.to_string()))?;
                        }
                        backend::Message::ErrorResponse(e) => return Err(auth_error(&cfg.user, e)),
                        _ => return Err(ReplicationError::Protocol("expected SASL continue".into())),
                    }
                    frontend::sasl_response(scram.message(), &mut self.out)?;
                    self.flush().await?;
                    match self.read_message().await? {
                        backend::Message::AuthenticationSaslFinal(b) => {
                            scram
                                .finish(b.data())
                                .map_err(|e| auth_err(&format!("server signature did not verify: {e}")))?;
                        }
                        backend::Message::ErrorResponse(e) => return Err(auth_error(&cfg.user, e)),
                        _ => return Err(ReplicationError::Protocol("expected SASL final".into())),
                    }
                }
                backend::Message::ErrorResponse(e) => return Err(auth_error(&cfg.user, e)),
                _ => {
                    return Err(auth_err(
                        "server asked for an authentication method we do not support (use scram-sha-256)",
                    ))
                }
            }
        }
    }

    pub(crate) async fn flush(&mut self) -> Result<(), ReplicationError> {
        self.writer.write_all(&self.out).await?;
        self.writer.flush().await?;
        self.out.clear();
        Ok(())
    }

    pub(crate) async fn read_message(&mut self) -> Result<backend::Message, ReplicationError> {
        let frame = self.reader.next_frame().await?;
        let mut buf = BytesMut::from(&frame.raw[..]);
        match backend::Message::parse(&mut buf)? {
            Some(m) => Ok(m),
            None => Err(ReplicationError::Protocol(
                "incomplete backend message".into(),
            )),
        }
    }

    /// Runs one statement with the simple-query protocol and returns its rows as text.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<SimpleRow>, ReplicationError> {
        frontend::query(sql, &mut self.out)?;
        self.flush().await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            match self.read_message().await? {
                backend::Message::DataRow(row) => {
                    let buf = row.buffer();
                    let mut ranges = row.ranges();
                    let mut values = Vec::new();
                    while let Some(r) = fallible_next(&mut ranges)? {
                        values.push(match r {
                            None => None,
                            Some(r) => Some(
                                std::str::from_utf8(&buf[r])
                                    .map_err(|_| {
                                        ReplicationError::Protocol("non-UTF-8 value".into())
                                    })?
                                    .to_string(),
                            ),
                        });
                    }
                    rows.push(SimpleRow(values));
                }
                backend::Message::ErrorResponse(e) => error = Some(server_error(e)),
                backend::Message::ReadyForQuery(_) => {
                    return match error {
                        Some(e) => Err(e),
                        None => Ok(rows),
                    }
                }
                _ => {}
            }
        }
    }

    /// Whether a whole backend message is already buffered, i.e. `next` would not wait.
    pub fn has_buffered_frame(&self) -> bool {
        self.reader.has_buffered_frame()
    }

    /// Sends Terminate and closes; errors are irrelevant at this point.
    pub async fn close(mut self) {
        frontend::terminate(&mut self.out);
        let _ = self.flush().await;
        let _ = self.writer.shutdown().await;
    }
}

fn fallible_next<I: FallibleIterator<Error = std::io::Error>>(
    it: &mut I,
) -> Result<Option<I::Item>, ReplicationError> {
    it.next().map_err(ReplicationError::Io)
}

/// A raw backend frame: its tag and the whole message bytes (tag and length included).
pub(crate) struct Frame {
    pub tag: u8,
    pub raw: Bytes,
}

impl Frame {
    /// The message body after tag and length.
    pub fn body(&self) -> Bytes {
        self.raw.slice(5..)
    }
}

/// Splits the byte stream into backend messages without copying bodies.
pub(crate) struct FrameReader {
    io: ReadHalf<BoxIo>,
    buf: BytesMut,
}

impl FrameReader {
    fn new(io: ReadHalf<BoxIo>) -> Self {
        FrameReader {
            io,
            buf: BytesMut::with_capacity(256 * 1024),
        }
    }

    pub fn has_buffered_frame(&self) -> bool {
        if self.buf.len() < 5 {
            return false;
        }
        let len = i32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]);
        len >= 4 && self.buf.len() > len as usize
    }

    pub async fn next_frame(&mut self) -> Result<Frame, ReplicationError> {
        loop {
            if self.buf.len() >= 5 {
                let len = i32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]);
                if len < 4 || len as usize > MAX_FRAME {
                    return Err(ReplicationError::Protocol(format!(
                        "backend message {:?} has invalid length {len}",
                        self.buf[0] as char
                    )));
                }
                let total = 1 + len as usize;
                if self.buf.len() >= total {
                    let raw = self.buf.split_to(total).freeze();
                    return Ok(Frame { tag: raw[0], raw });
                }
                self.buf.reserve(total - self.buf.len());
            }
            if self.buf.capacity() - self.buf.len() < 8192 {
                self.buf.reserve(256 * 1024);
            }
            let n = self.io.read_buf(&mut self.buf).await?;
            if n == 0 {
                return Err(ReplicationError::Io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "server closed the connection",
                )));
            }
        }
    }
}

/// Decodes an ErrorResponse into our error, keeping SQLSTATE, detail and hint.
pub(crate) fn server_error(body: backend::ErrorResponseBody) -> ReplicationError {
    let mut code = String::new();
    let mut message = String::new();
    let mut detail = None;
    let mut hint = None;
    let mut fields = body.fields();
    while let Ok(Some(f)) = fallible_next(&mut fields) {
        let value = String::from_utf8_lossy(f.value_bytes()).into_owned();
        match f.type_() {
            b'C' => code = value,
            b'M' => message = value,
            b'D' => detail = Some(value),
            b'H' => hint = Some(value),
            _ => {}
        }
    }
    ReplicationError::Server {
        code,
        message,
        detail,
        hint,
    }
}

/// Parses an ErrorResponse from the raw body bytes of a streaming frame.
pub(crate) fn server_error_from_frame(frame: &Frame) -> ReplicationError {
    let mut buf = BytesMut::from(&frame.raw[..]);
    match backend::Message::parse(&mut buf) {
        Ok(Some(backend::Message::ErrorResponse(e))) => server_error(e),
        _ => ReplicationError::Protocol("malformed ErrorResponse".into()),
    }
}

fn auth_error(user: &str, body: backend::ErrorResponseBody) -> ReplicationError {
    match server_error(body) {
        // 28P01 invalid_password, 28000 invalid_authorization_specification: keep the server's
        // wording (it names no secret) and say what to check.
        ReplicationError::Server { code, message, .. } if code.starts_with("28") => {
            ReplicationError::Auth {
                user: user.to_string(),
                reason: format!(
                    "{message} (SQLSTATE {code}); check the user name, password and pg_hba.conf"
                ),
            }
        }
        other => other,
    }
}

async fn negotiate_tls(
    mut tcp: TcpStream,
    cfg: &ConnectionConfig,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ReplicationError> {
    let mut buf = BytesMut::new();
    frontend::ssl_request(&mut buf);
    tcp.write_all(&buf).await?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await?;
    if answer[0] != b'S' {
        return Err(ReplicationError::Tls(format!(
            "server at {} does not accept TLS (sslmode={}); enable ssl on the server or use sslmode=disable",
            cfg.target(),
            cfg.sslmode
        )));
    }
    let tls = |reason: String| {
        ReplicationError::Tls(format!("capture connection to {}: {reason}", cfg.target()))
    };
    let config = lily_pg::tls::client_config(cfg).map_err(tls)?;
    let name = lily_pg::tls::server_name(&cfg.host).map_err(tls)?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| tls(format!("TLS handshake failed: {e}")))
}

/// Writes a CopyData frame around `payload`.
pub(crate) fn put_copy_data(out: &mut BytesMut, payload: &[u8]) {
    out.put_u8(b'd');
    out.put_i32(4 + payload.len() as i32);
    out.put_slice(payload);
}

pub(crate) fn get_u64(b: &mut Bytes) -> Result<u64, ReplicationError> {
    if b.remaining() < 8 {
        return Err(ReplicationError::Protocol(
            "truncated replication frame".into(),
        ));
    }
    Ok(b.get_u64())
}
