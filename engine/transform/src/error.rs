use std::fmt;

/// A position in a SQL file, 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub line: usize,
    pub column: usize,
}

impl Location {
    /// The parser reports positions only in its message text ("… at Line: 3, Column: 8").
    pub(crate) fn from_message(message: &str) -> Option<Location> {
        let at = message.find("Line: ")?;
        let rest = &message[at + "Line: ".len()..];
        let (line, rest) = rest.split_once(", Column: ")?;
        let column: String = rest.chars().take_while(char::is_ascii_digit).collect();
        Some(Location {
            line: line.trim().parse().ok()?,
            column: column.parse().ok()?,
        })
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum TransformError {
    /// The SQL does not parse or plan: a syntax error, an unknown table or column, a type
    /// mismatch, a statement that is not a query.
    #[error("{message}")]
    Plan {
        message: String,
        location: Option<Location>,
    },
    /// Running the plan on a batch failed. Retryable errors (the metastore connection) can
    /// succeed on a later attempt; the rest fail the same way again.
    #[error("{message}")]
    Execute { message: String, retryable: bool },
    #[error("the transform has no source table {0:?}")]
    UnknownSource(String),
}

impl TransformError {
    pub(crate) fn plan(message: String) -> Self {
        TransformError::Plan {
            message,
            location: None,
        }
    }

    pub(crate) fn execute(message: String, retryable: bool) -> Self {
        TransformError::Execute { message, retryable }
    }

    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            TransformError::Execute {
                retryable: true,
                ..
            }
        )
    }

    pub fn location(&self) -> Option<Location> {
        match self {
            TransformError::Plan { location, .. } => *location,
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn location_from_parser_message() {
        let l = Location::from_message(
            "SQL error: ParserError(\"Expected: end of statement, found: x at Line: 3, Column: 8\")",
        );
        assert_eq!(l, Some(Location { line: 3, column: 8 }));
        assert_eq!(Location::from_message("no position"), None);
    }
}
