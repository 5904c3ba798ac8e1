//! A TCP proxy that misbehaves on command, put between a sink and its (fake or real) remote so
//! the transport-level faults ([`Fault::Refused`](crate::Fault::Refused), `Dropped`, `Hang`,
//! `Malformed`) are the same for every sink that talks TCP, whatever the protocol.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Bytes that are no protocol's answer: an unknown PostgreSQL message type, an HTTP status line
/// that does not parse.
pub const GARBAGE: &[u8] = b"\x7f\x00\x00\x00\x05?NOT A PROTOCOL ANSWER\r\n\r\n";

/// What the proxy does with the next chunk a client sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OneShot {
    /// Reset the connection instead of forwarding it.
    Drop,
    /// Answer [`GARBAGE`] and close, instead of forwarding it.
    Garbage,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Pass,
    /// Forward requests, hold every answer.
    Hang,
}

struct State {
    upstream: SocketAddr,
    mode: watch::Sender<Mode>,
    /// Bumped to cut every open connection.
    cut: watch::Sender<u64>,
    next: Mutex<Option<OneShot>>,
    accept: Mutex<Option<JoinHandle<()>>>,
    connections: Mutex<Vec<JoinHandle<()>>>,
    /// When a chunk last passed, either way.
    last_traffic: Mutex<Instant>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A misbehaving TCP proxy on `127.0.0.1`. Dropping it stops it and cuts its connections.
pub struct FaultProxy {
    addr: SocketAddr,
    state: Arc<State>,
}

impl FaultProxy {
    /// Starts a proxy to `upstream` on a free loopback port, passing everything through.
    /// Must be called within a Tokio runtime.
    ///
    /// # Panics
    /// If no loopback port can be bound.
    pub async fn start(upstream: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("fault proxy: cannot bind 127.0.0.1");
        let addr = listener
            .local_addr()
            .expect("fault proxy: bound socket has no address");
        let state = Arc::new(State {
            upstream,
            mode: watch::Sender::new(Mode::Pass),
            cut: watch::Sender::new(0),
            next: Mutex::new(None),
            accept: Mutex::new(None),
            connections: Mutex::new(Vec::new()),
            last_traffic: Mutex::new(Instant::now()),
        });
        let proxy = FaultProxy { addr, state };
        proxy.serve(listener);
        proxy
    }

    /// The address to point the sink at.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Stops listening (new connections are refused) and cuts every open connection.
    pub fn refuse(&self) {
        if let Some(accept) = lock(&self.state.accept).take() {
            accept.abort();
        }
        // Reset, not aborted: an aborted task would close them with a FIN.
        self.state.cut.send_modify(|n| *n += 1);
    }

    /// Waits until nothing has passed either way for `idle`. A client may still be writing
    /// after its last call returned (tokio-postgres closes a dropped prepared statement with a
    /// message sent later, from its connection task); a one-shot fault armed before that
    /// lands would hit it instead of the request under test.
    pub async fn settle(&self, idle: Duration) {
        loop {
            let since = lock(&self.state.last_traffic).elapsed();
            if since >= idle {
                return;
            }
            tokio::time::sleep(idle - since).await;
        }
    }

    /// From now on requests are forwarded but no answer comes back (until [`heal`](Self::heal)).
    pub fn hang(&self) {
        self.state.mode.send_replace(Mode::Hang);
    }

    /// The next chunk a client sends is not forwarded; its connection is reset instead.
    pub fn drop_next(&self) {
        *lock(&self.state.next) = Some(OneShot::Drop);
    }

    /// The next chunk a client sends is not forwarded; it is answered with [`GARBAGE`] and the
    /// connection closed.
    pub fn garbage_next(&self) {
        *lock(&self.state.next) = Some(OneShot::Garbage);
    }

    /// Back to passing everything through, listening again if [`refuse`](Self::refuse)d.
    pub async fn heal(&self) {
        *lock(&self.state.next) = None;
        self.state.mode.send_replace(Mode::Pass);
        let listening = lock(&self.state.accept).is_some();
        if !listening {
            // The same port again (the listener sets SO_REUSEADDR); a moment may be needed for
            // the old socket to go.
            for _ in 0..50 {
                if let Ok(listener) = TcpListener::bind(self.addr).await {
                    self.serve(listener);
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            panic!("fault proxy: cannot listen on {} again", self.addr);
        }
    }

    fn serve(&self, listener: TcpListener) {
        let state = Arc::clone(&self.state);
        let accept = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let conn = tokio::spawn(connection(Arc::clone(&state), client));
                let mut all = lock(&state.connections);
                all.retain(|c| !c.is_finished());
                all.push(conn);
            }
        });
        *lock(&self.state.accept) = Some(accept);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(accept) = lock(&self.state.accept).take() {
            accept.abort();
        }
        for c in lock(&self.state.connections).drain(..) {
            c.abort();
        }
    }
}

/// How the client-to-upstream direction ended.
enum Up {
    /// The client closed its side, or an I/O error.
    Closed,
    Drop,
    Garbage,
    /// [`FaultProxy::refuse`] cut it.
    Cut,
}

async fn connection(state: Arc<State>, client: TcpStream) {
    let _ = client.set_nodelay(true);
    let Ok(upstream) = TcpStream::connect(state.upstream).await else {
        reset(client);
        return;
    };
    let _ = upstream.set_nodelay(true);
    let (mut client_read, mut client_write) = client.into_split();
    let (mut upstream_read, mut upstream_write) = upstream.into_split();
    let mut cut = state.cut.subscribe();
    let ending = {
        let up = pump_up(&state, &mut client_read, &mut upstream_write);
        let down = pump_down(&state, &mut upstream_read, &mut client_write);
        tokio::pin!(up, down);
        let first = tokio::select! {
            ending = &mut up => Some(ending),
            () = &mut down => None,
            _ = cut.changed() => Some(Up::Cut),
        };
        match first {
            // The client is done sending: let the answer to what it sent finish coming back.
            Some(Up::Closed) => {
                let was_cut = tokio::select! {
                    () = &mut down => false,
                    _ = cut.changed() => true,
                };
                if was_cut {
                    Up::Cut
                } else {
                    Up::Closed
                }
            }
            Some(other) => other,
            None => Up::Closed,
        }
    };
    match ending {
        Up::Closed => {}
        Up::Garbage => {
            let _ = client_write.write_all(GARBAGE).await;
            let _ = client_write.shutdown().await;
            // Give the client a moment to read it before the socket goes.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Up::Drop | Up::Cut => {
            if let Ok(client) = client_read.reunite(client_write) {
                reset(client);
            }
        }
    }
}

/// Closes with a RST rather than a FIN: a connection reset by peer.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

async fn pump_up(state: &State, from: &mut OwnedReadHalf, to: &mut OwnedWriteHalf) -> Up {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return Up::Closed;
            }
            Ok(n) => n,
        };
        *lock(&state.last_traffic) = Instant::now();
        match lock(&state.next).take() {
            Some(OneShot::Drop) => return Up::Drop,
            Some(OneShot::Garbage) => return Up::Garbage,
            None => {}
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return Up::Closed;
        }
    }
}

async fn pump_down(state: &State, from: &mut OwnedReadHalf, to: &mut OwnedWriteHalf) {
    let mut buf = vec![0u8; 64 << 10];
    let mut mode = state.mode.subscribe();
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        *lock(&state.last_traffic) = Instant::now();
        // A hung remote: the answer is held for as long as the proxy hangs.
        if mode.wait_for(|m| *m == Mode::Pass).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An upstream that answers each chunk with `ok:` + the chunk.
    async fn echo() -> SocketAddr {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    loop {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                let mut answer = b"ok:".to_vec();
                                answer.extend_from_slice(&buf[..n]);
                                if s.write_all(&answer).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        addr
    }

    async fn ask(s: &mut TcpStream, what: &[u8]) -> std::io::Result<Vec<u8>> {
        s.write_all(what).await?;
        let mut buf = vec![0u8; 1024];
        let n = s.read(&mut buf).await?;
        buf.truncate(n);
        Ok(buf)
    }

    #[tokio::test]
    async fn passes_through_and_misbehaves_on_command() {
        let proxy = FaultProxy::start(echo().await).await;
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(ask(&mut s, b"a").await.unwrap(), b"ok:a");

        proxy.garbage_next();
        assert_eq!(ask(&mut s, b"b").await.unwrap(), GARBAGE);
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(ask(&mut s, b"c").await.unwrap(), b"ok:c");

        proxy.drop_next();
        let e = ask(&mut s, b"d").await;
        assert!(
            matches!(&e, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset)
                || matches!(&e, Ok(v) if v.is_empty()),
            "{e:?}"
        );

        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        proxy.hang();
        s.write_all(b"e").await.unwrap();
        let mut buf = [0u8; 16];
        assert!(
            tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf))
                .await
                .is_err(),
            "a hung proxy answered"
        );
        proxy.heal().await;
        let n = s.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"ok:e");

        proxy.refuse();
        let mut buf = [0u8; 16];
        // The open connection is cut…
        let cut = s.read(&mut buf).await;
        assert!(matches!(cut, Ok(0) | Err(_)), "{cut:?}");
        // …and nothing listens.
        let refused = TcpStream::connect(proxy.addr()).await.unwrap_err();
        assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
        proxy.heal().await;
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(ask(&mut s, b"f").await.unwrap(), b"ok:f");
    }
}
