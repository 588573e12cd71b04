//! The one error type of this crate: a problem in a spec file, with where it is
//! and how to fix it.

use std::fmt;

/// A problem found while reading, parsing or validating a spec.
///
/// Displays as `file:line:column: field: message` followed by an indented
/// `hint:` line; the parts that are unknown are left out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecError {
    /// The file name given to [`crate::parse_spec`] or the path given to [`crate::load_spec`].
    pub file: String,
    /// 1-based line, when the problem has a place in the file.
    pub line: Option<usize>,
    /// 1-based column (in characters), when known.
    pub column: Option<usize>,
    /// Dotted path of the field, like `strategy.rolling.max_surge` or
    /// `driver.process.command[2]`; empty when the problem is not about one field.
    pub field: String,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub hint: String,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        f.write_str(": ")?;
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)?;
        if !self.hint.is_empty() {
            write!(f, "\n  hint: {}", self.hint)?;
        }
        Ok(())
    }
}

impl std::error::Error for SpecError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_format() {
        let e = SpecError {
            file: "quickstart.yaml".into(),
            line: Some(14),
            column: Some(7),
            field: "strategy.rolling.max_surge".into(),
            message: "bad".into(),
            hint: "fix it".into(),
        };
        assert_eq!(
            e.to_string(),
            "quickstart.yaml:14:7: strategy.rolling.max_surge: bad\n  hint: fix it"
        );
        let e = SpecError {
            line: None,
            column: None,
            field: String::new(),
            hint: String::new(),
            ..e
        };
        assert_eq!(e.to_string(), "quickstart.yaml: bad");
    }
}
