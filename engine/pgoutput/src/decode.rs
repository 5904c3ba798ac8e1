//! The byte-level reader. Every read is bounds-checked: a truncated or malformed message is an
//! error naming what was being read, never a panic.

use bytes::{Buf, Bytes};

use crate::*;

/// A pgoutput message could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecodeError {
    #[error("empty pgoutput message")]
    Empty,
    #[error(
        "unknown pgoutput message tag {0:?} (0x{1:02x}); only protocol version 1 is supported"
    )]
    UnknownTag(char, u8),
    #[error("truncated pgoutput {message} message while reading {field}")]
    Truncated {
        message: &'static str,
        field: &'static str,
    },
    #[error("malformed pgoutput {message} message: {detail}")]
    Malformed {
        message: &'static str,
        detail: String,
    },
}

struct Reader {
    buf: Bytes,
    message: &'static str,
}

impl Reader {
    fn need(&self, n: usize, field: &'static str) -> Result<(), DecodeError> {
        if self.buf.remaining() < n {
            return Err(DecodeError::Truncated {
                message: self.message,
                field,
            });
        }
        Ok(())
    }
    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        self.need(1, field)?;
        Ok(self.buf.get_u8())
    }
    fn i16(&mut self, field: &'static str) -> Result<i16, DecodeError> {
        self.need(2, field)?;
        Ok(self.buf.get_i16())
    }
    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        self.need(4, field)?;
        Ok(self.buf.get_u32())
    }
    fn i32(&mut self, field: &'static str) -> Result<i32, DecodeError> {
        self.need(4, field)?;
        Ok(self.buf.get_i32())
    }
    fn i64(&mut self, field: &'static str) -> Result<i64, DecodeError> {
        self.need(8, field)?;
        Ok(self.buf.get_i64())
    }
    fn lsn(&mut self, field: &'static str) -> Result<Lsn, DecodeError> {
        self.need(8, field)?;
        Ok(Lsn(self.buf.get_u64()))
    }
    fn bytes(&mut self, n: usize, field: &'static str) -> Result<Bytes, DecodeError> {
        self.need(n, field)?;
        Ok(self.buf.split_to(n))
    }
    /// A NUL-terminated string, UTF-8 (the walsender converts to the client encoding we ask for).
    fn cstr(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let Some(end) = self.buf.iter().position(|b| *b == 0) else {
            return Err(DecodeError::Truncated {
                message: self.message,
                field,
            });
        };
        let raw = self.buf.split_to(end);
        self.buf.advance(1);
        String::from_utf8(raw.to_vec()).map_err(|_| DecodeError::Malformed {
            message: self.message,
            detail: format!("{field} is not valid UTF-8"),
        })
    }
    fn malformed(&self, detail: String) -> DecodeError {
        DecodeError::Malformed {
            message: self.message,
            detail,
        }
    }
    fn finish<T>(self, value: T) -> Result<T, DecodeError> {
        if self.buf.has_remaining() {
            return Err(self.malformed(format!("{} trailing bytes", self.buf.remaining())));
        }
        Ok(value)
    }

    fn tuple(&mut self) -> Result<Tuple, DecodeError> {
        let n = self.i16("tuple column count")?;
        if n < 0 {
            return Err(self.malformed(format!("negative column count {n}")));
        }
        let mut values = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let kind = self.u8("tuple value kind")?;
            let value = match kind {
                b'n' => Value::Null,
                b'u' => Value::UnchangedToast,
                b't' | b'b' => {
                    let len = self.i32("tuple value length")?;
                    if len < 0 {
                        return Err(self.malformed(format!("negative value length {len}")));
                    }
                    let data = self.bytes(len as usize, "tuple value")?;
                    if kind == b't' {
                        Value::Text(data)
                    } else {
                        Value::Binary(data)
                    }
                }
                other => {
                    return Err(
                        self.malformed(format!("unknown tuple value kind {:?}", other as char))
                    )
                }
            };
            values.push(value);
        }
        Ok(Tuple(values))
    }
}

/// Decodes the payload of one `XLogData` frame.
pub fn decode(buf: Bytes) -> Result<Message, DecodeError> {
    let Some(&tag) = buf.first() else {
        return Err(DecodeError::Empty);
    };
    let message = match tag {
        b'B' => "Begin",
        b'C' => "Commit",
        b'O' => "Origin",
        b'R' => "Relation",
        b'Y' => "Type",
        b'I' => "Insert",
        b'U' => "Update",
        b'D' => "Delete",
        b'T' => "Truncate",
        b'M' => "Message",
        other => return Err(DecodeError::UnknownTag(other as char, other)),
    };
    let mut r = Reader {
        buf: buf.slice(1..),
        message,
    };
    match tag {
        b'B' => {
            let final_lsn = r.lsn("final LSN")?;
            let commit_ts = r.i64("commit timestamp")?;
            let xid = r.u32("xid")?;
            r.finish(Message::Begin(Begin {
                final_lsn,
                commit_ts,
                xid,
            }))
        }
        b'C' => {
            let flags = r.u8("flags")?;
            let commit_lsn = r.lsn("commit LSN")?;
            let end_lsn = r.lsn("end LSN")?;
            let commit_ts = r.i64("commit timestamp")?;
            r.finish(Message::Commit(Commit {
                flags,
                commit_lsn,
                end_lsn,
                commit_ts,
            }))
        }
        b'O' => {
            let commit_lsn = r.lsn("commit LSN")?;
            let name = r.cstr("origin name")?;
            r.finish(Message::Origin(Origin { commit_lsn, name }))
        }
        b'R' => {
            let id = r.u32("relation id")?;
            let namespace = r.cstr("namespace")?;
            let name = r.cstr("relation name")?;
            let replica_identity = match r.u8("replica identity")? {
                b'd' => ReplicaIdentity::Default,
                b'n' => ReplicaIdentity::Nothing,
                b'f' => ReplicaIdentity::Full,
                b'i' => ReplicaIdentity::Index,
                other => {
                    return Err(r.malformed(format!("unknown replica identity {:?}", other as char)))
                }
            };
            let n = r.i16("column count")?;
            if n < 0 {
                return Err(r.malformed(format!("negative column count {n}")));
            }
            let mut columns = Vec::with_capacity(n as usize);
            for _ in 0..n {
                let flags = r.u8("column flags")?;
                let name = r.cstr("column name")?;
                let type_oid = r.u32("column type")?;
                let type_modifier = r.i32("column type modifier")?;
                columns.push(Column {
                    is_key: flags & 1 == 1,
                    name,
                    type_oid,
                    type_modifier,
                });
            }
            r.finish(Message::Relation(Relation {
                id,
                namespace,
                name,
                replica_identity,
                columns,
            }))
        }
        b'Y' => {
            let id = r.u32("type id")?;
            let namespace = r.cstr("namespace")?;
            let name = r.cstr("type name")?;
            r.finish(Message::Type(Type {
                id,
                namespace,
                name,
            }))
        }
        b'I' => {
            let relation_id = r.u32("relation id")?;
            match r.u8("tuple marker")? {
                b'N' => {}
                other => {
                    return Err(r.malformed(format!(
                        "expected new tuple marker 'N', got {:?}",
                        other as char
                    )))
                }
            }
            let new = r.tuple()?;
            r.finish(Message::Insert(Insert { relation_id, new }))
        }
        b'U' => {
            let relation_id = r.u32("relation id")?;
            let mut old = None;
            let mut marker = r.u8("tuple marker")?;
            if marker == b'K' || marker == b'O' {
                let t = r.tuple()?;
                old = Some(if marker == b'K' {
                    OldTuple::Key(t)
                } else {
                    OldTuple::Old(t)
                });
                marker = r.u8("new tuple marker")?;
            }
            if marker != b'N' {
                return Err(r.malformed(format!(
                    "expected new tuple marker 'N', got {:?}",
                    marker as char
                )));
            }
            let new = r.tuple()?;
            r.finish(Message::Update(Update {
                relation_id,
                old,
                new,
            }))
        }
        b'D' => {
            let relation_id = r.u32("relation id")?;
            let marker = r.u8("tuple marker")?;
            let t = r.tuple()?;
            let old = match marker {
                b'K' => OldTuple::Key(t),
                b'O' => OldTuple::Old(t),
                other => {
                    return Err(r.malformed(format!(
                        "expected old tuple marker 'K' or 'O', got {:?}",
                        other as char
                    )))
                }
            };
            r.finish(Message::Delete(Delete { relation_id, old }))
        }
        b'T' => {
            let n = r.u32("relation count")?;
            let options = r.u8("options")?;
            // Guard the allocation against a hostile count: each id takes 4 bytes.
            r.need(n as usize * 4, "relation ids")?;
            let mut relation_ids = Vec::with_capacity(n as usize);
            for _ in 0..n {
                relation_ids.push(r.u32("relation id")?);
            }
            r.finish(Message::Truncate(Truncate {
                cascade: options & 1 != 0,
                restart_identity: options & 2 != 0,
                relation_ids,
            }))
        }
        b'M' => {
            let flags = r.u8("flags")?;
            let lsn = r.lsn("message LSN")?;
            let prefix = r.cstr("prefix")?;
            let len = r.i32("content length")?;
            if len < 0 {
                return Err(r.malformed(format!("negative content length {len}")));
            }
            let content = r.bytes(len as usize, "content")?;
            r.finish(Message::Message(LogicalMessage {
                transactional: flags & 1 != 0,
                lsn,
                prefix,
                content,
            }))
        }
        _ => unreachable!("tag checked above"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{BufMut, BytesMut};

    fn tuple(b: &mut BytesMut, values: &[Option<&str>]) {
        b.put_i16(values.len() as i16);
        for v in values {
            match v {
                None => b.put_u8(b'n'),
                Some("<toast>") => b.put_u8(b'u'),
                Some(s) => {
                    b.put_u8(b't');
                    b.put_i32(s.len() as i32);
                    b.put_slice(s.as_bytes());
                }
            }
        }
    }

    fn text(s: &str) -> Value {
        Value::Text(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn begin_and_commit() {
        let mut b = BytesMut::new();
        b.put_u8(b'B');
        b.put_u64(0x1_0000_0010);
        b.put_i64(123);
        b.put_u32(77);
        assert_eq!(
            decode(b.freeze()).unwrap(),
            Message::Begin(Begin {
                final_lsn: Lsn(0x1_0000_0010),
                commit_ts: 123,
                xid: 77
            })
        );
        let mut b = BytesMut::new();
        b.put_u8(b'C');
        b.put_u8(0);
        b.put_u64(10);
        b.put_u64(20);
        b.put_i64(5);
        assert_eq!(
            decode(b.freeze()).unwrap(),
            Message::Commit(Commit {
                flags: 0,
                commit_lsn: Lsn(10),
                end_lsn: Lsn(20),
                commit_ts: 5
            })
        );
    }

    #[test]
    fn relation_with_key_column() {
        let mut b = BytesMut::new();
        b.put_u8(b'R');
        b.put_u32(16384);
        b.put_slice(b"public\0assets\0");
        b.put_u8(b'f');
        b.put_i16(2);
        b.put_u8(1);
        b.put_slice(b"guid\0");
        b.put_u32(2950);
        b.put_i32(-1);
        b.put_u8(0);
        b.put_slice(b"name\0");
        b.put_u32(25);
        b.put_i32(-1);
        let Message::Relation(r) = decode(b.freeze()).unwrap() else {
            panic!()
        };
        assert_eq!(r.namespace, "public");
        assert_eq!(r.replica_identity, ReplicaIdentity::Full);
        assert!(r.columns[0].is_key && !r.columns[1].is_key);
        assert_eq!(r.columns[1].type_oid, 25);
    }

    #[test]
    fn update_with_old_key_and_unchanged_toast() {
        let mut b = BytesMut::new();
        b.put_u8(b'U');
        b.put_u32(7);
        b.put_u8(b'K');
        tuple(&mut b, &[Some("1"), None]);
        b.put_u8(b'N');
        tuple(&mut b, &[Some("2"), Some("<toast>")]);
        let m = decode(b.freeze()).unwrap();
        assert_eq!(
            m,
            Message::Update(Update {
                relation_id: 7,
                old: Some(OldTuple::Key(Tuple(vec![text("1"), Value::Null]))),
                new: Tuple(vec![text("2"), Value::UnchangedToast]),
            })
        );
    }

    #[test]
    fn insert_delete_truncate_message_type_origin() {
        let mut b = BytesMut::new();
        b.put_u8(b'I');
        b.put_u32(7);
        b.put_u8(b'N');
        tuple(&mut b, &[Some("x")]);
        assert!(
            matches!(decode(b.freeze()).unwrap(), Message::Insert(i) if i.new.0 == vec![text("x")])
        );

        let mut b = BytesMut::new();
        b.put_u8(b'D');
        b.put_u32(7);
        b.put_u8(b'O');
        tuple(&mut b, &[Some("x"), None]);
        assert!(matches!(
            decode(b.freeze()).unwrap(),
            Message::Delete(Delete {
                old: OldTuple::Old(_),
                ..
            })
        ));

        let mut b = BytesMut::new();
        b.put_u8(b'T');
        b.put_u32(2);
        b.put_u8(3);
        b.put_u32(1);
        b.put_u32(2);
        assert_eq!(
            decode(b.freeze()).unwrap(),
            Message::Truncate(Truncate {
                cascade: true,
                restart_identity: true,
                relation_ids: vec![1, 2]
            })
        );

        let mut b = BytesMut::new();
        b.put_u8(b'M');
        b.put_u8(1);
        b.put_u64(99);
        b.put_slice(b"lily\0");
        b.put_i32(3);
        b.put_slice(b"abc");
        assert_eq!(
            decode(b.freeze()).unwrap(),
            Message::Message(LogicalMessage {
                transactional: true,
                lsn: Lsn(99),
                prefix: "lily".into(),
                content: Bytes::from_static(b"abc")
            })
        );

        let mut b = BytesMut::new();
        b.put_u8(b'Y');
        b.put_u32(16400);
        b.put_slice(b"public\0mood\0");
        assert!(matches!(decode(b.freeze()).unwrap(), Message::Type(t) if t.name == "mood"));

        let mut b = BytesMut::new();
        b.put_u8(b'O');
        b.put_u64(5);
        b.put_slice(b"node1\0");
        assert!(matches!(decode(b.freeze()).unwrap(), Message::Origin(o) if o.name == "node1"));
    }

    #[test]
    fn every_truncation_of_a_valid_message_is_an_error_not_a_panic() {
        let mut b = BytesMut::new();
        b.put_u8(b'U');
        b.put_u32(7);
        b.put_u8(b'O');
        tuple(&mut b, &[Some("1"), None, Some("<toast>")]);
        b.put_u8(b'N');
        tuple(&mut b, &[Some("2"), Some("abc"), Some("<toast>")]);
        let full = b.freeze();
        assert!(decode(full.clone()).is_ok());
        for cut in 0..full.len() {
            assert!(decode(full.slice(..cut)).is_err(), "cut at {cut}");
        }
        let mut extra = BytesMut::from(&full[..]);
        extra.put_u8(0);
        assert!(matches!(
            decode(extra.freeze()),
            Err(DecodeError::Malformed { .. })
        ));
    }

    #[test]
    fn hostile_lengths_and_tags() {
        assert_eq!(decode(Bytes::new()), Err(DecodeError::Empty));
        assert!(matches!(
            decode(Bytes::from_static(b"Z")),
            Err(DecodeError::UnknownTag('Z', _))
        ));
        let mut b = BytesMut::new();
        b.put_u8(b'T');
        b.put_u32(u32::MAX);
        b.put_u8(0);
        assert!(matches!(
            decode(b.freeze()),
            Err(DecodeError::Truncated { .. })
        ));
        let mut b = BytesMut::new();
        b.put_u8(b'I');
        b.put_u32(1);
        b.put_u8(b'N');
        b.put_i16(1);
        b.put_u8(b't');
        b.put_i32(-5);
        assert!(matches!(
            decode(b.freeze()),
            Err(DecodeError::Malformed { .. })
        ));
    }
}
