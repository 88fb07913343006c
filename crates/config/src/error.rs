//! Config errors: each names the file, line, column and key path, and says what was
//! expected. A load reports all of them at once ([`Errors`]).

use std::fmt;
use std::ops::Range;

/// One problem in a config file.
///
/// Displayed as `file:line:col: key.path: message`, e.g.
/// `tidegate.toml:14:9: upstreams.app.keepalive: expected a whole number, found "32x"`.
/// `line` and `col` are 1-based (`col` counts characters); both are 0 when the error has
/// no position (the file could not be read), and `key` is empty when the error is not
/// about one key (a TOML syntax error); Display then leaves those parts out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The config file as it was given (`<quickstart>` for the embedded config).
    pub file: String,
    /// 1-based line; 0 = no position.
    pub line: usize,
    /// 1-based column, in characters; 0 = no position.
    pub col: usize,
    /// Dotted key path, with `[i]` for array elements: `listeners.web.routes[1].path`.
    pub key: String,
    /// What is wrong and what was expected.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.col)?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every error found in one load, in file order. Displayed one error per line.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Errors(pub Vec<ConfigError>);

impl Errors {
    /// The errors, in file order.
    pub fn iter(&self) -> std::slice::Iter<'_, ConfigError> {
        self.0.iter()
    }

    /// How many errors there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there is none (a successful load never returns an empty `Errors`).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for Errors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Errors {}

impl IntoIterator for Errors {
    type Item = ConfigError;
    type IntoIter = std::vec::IntoIter<ConfigError>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a Errors {
    type Item = &'a ConfigError;
    type IntoIter = std::slice::Iter<'a, ConfigError>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// Collects errors against one source text, turning byte spans into line and column.
pub(crate) struct Sink<'s> {
    file: String,
    src: &'s str,
    errors: Vec<(usize, ConfigError)>,
    /// Valid, but worth a look (a certificate near its expiry): never fails a load.
    warnings: Vec<(usize, ConfigError)>,
}

impl<'s> Sink<'s> {
    pub(crate) fn new(file: String, src: &'s str) -> Self {
        Sink {
            file,
            src,
            errors: Vec::new(),
            warnings: Vec::new(),
        }
    }

    /// Records an error at the start of `span` (the start of the file when unknown).
    pub(crate) fn push(&mut self, span: Option<Range<usize>>, key: &str, message: String) {
        let e = self.at(span, key, message);
        self.errors.push(e);
    }

    /// Records a warning, placed like an error.
    pub(crate) fn warn(&mut self, span: Option<Range<usize>>, key: &str, message: String) {
        let w = self.at(span, key, message);
        self.warnings.push(w);
    }

    /// The warnings in file order.
    pub(crate) fn take_warnings(&mut self) -> Vec<ConfigError> {
        let mut w = std::mem::take(&mut self.warnings);
        w.sort_by_key(|(offset, _)| *offset);
        w.into_iter().map(|(_, e)| e).collect()
    }

    fn at(&self, span: Option<Range<usize>>, key: &str, message: String) -> (usize, ConfigError) {
        let offset = span.map_or(0, |s| s.start.min(self.src.len()));
        let (line, col) = self.line_col(offset);
        (
            offset,
            ConfigError {
                file: self.file.clone(),
                line,
                col,
                key: key.to_owned(),
                message,
            },
        )
    }

    /// `file:line:col` of a span, to name the other place in "… also at …" messages.
    pub(crate) fn place(&self, span: Option<Range<usize>>) -> String {
        let (line, col) = self.line_col(span.map_or(0, |s| s.start.min(self.src.len())));
        format!("{}:{line}:{col}", self.file)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    /// The errors in file order (stable, so errors at one place keep their order).
    pub(crate) fn finish(mut self) -> Errors {
        self.errors.sort_by_key(|(offset, _)| *offset);
        Errors(self.errors.into_iter().map(|(_, e)| e).collect())
    }

    fn line_col(&self, offset: usize) -> (usize, usize) {
        // Spans come from the parser and fall on char boundaries; `get` keeps a bad one
        // from panicking all the same.
        let before = self.src.get(..offset).unwrap_or(self.src);
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let line = before.matches('\n').count() + 1;
        let col = before[line_start..].chars().count() + 1;
        (line, col)
    }
}
