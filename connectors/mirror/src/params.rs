//! A `text[]` statement parameter built in one buffer.

use std::error::Error;

use bytes::{BufMut, BytesMut};
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};

use crate::render::ColumnText;

/// One column of values for `unnest($n::text[])`: the texts back to back in one string, so a
/// column of a million values is two allocations rather than a million.
#[derive(Debug, Default, Clone)]
pub(crate) struct TextArray {
    buf: String,
    /// Start and end in `buf`; `None` for null.
    spans: Vec<Option<(usize, usize)>>,
    has_nulls: bool,
}

impl TextArray {
    pub fn with_capacity(n: usize) -> Self {
        TextArray {
            buf: String::new(),
            spans: Vec::with_capacity(n),
            has_nulls: false,
        }
    }

    /// Appends the value of `col` at `row`.
    #[inline]
    pub fn push_from(&mut self, col: &ColumnText<'_>, row: usize) {
        let start = self.buf.len();
        if col.write(row, &mut self.buf) {
            self.spans.push(Some((start, self.buf.len())));
        } else {
            self.spans.push(None);
            self.has_nulls = true;
        }
    }

    #[cfg(test)]
    pub fn values(&self) -> Vec<Option<&str>> {
        self.spans
            .iter()
            .map(|s| s.map(|(a, b)| &self.buf[a..b]))
            .collect()
    }
}

impl ToSql for TextArray {
    /// The binary array format: dimensions, null flag, element type, then each element's length
    /// (-1 for null) and bytes.
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        let n = i32::try_from(self.spans.len()).map_err(|_| "too many array elements")?;
        out.reserve(20 + self.buf.len() + 4 * self.spans.len());
        out.put_i32(1);
        out.put_i32(i32::from(self.has_nulls));
        out.put_u32(Type::TEXT.oid());
        out.put_i32(n);
        out.put_i32(1);
        for span in &self.spans {
            match span {
                Some((a, b)) => {
                    out.put_i32(i32::try_from(b - a).map_err(|_| "array element over 2 GB")?);
                    out.put_slice(&self.buf.as_bytes()[*a..*b]);
                }
                None => out.put_i32(-1),
            }
        }
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::TEXT_ARRAY
    }

    to_sql_checked!();
}
