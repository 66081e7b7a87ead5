//! Errors a user can fix: each is one line that names the file, key or row and says what to change.
use std::fmt;

/// One or more problems, reported together (exit code 2).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Problems(pub Vec<String>);

impl Problems {
    pub fn one(msg: impl Into<String>) -> Self {
        Problems(vec![msg.into()])
    }

    pub fn push(&mut self, msg: impl Into<String>) {
        self.0.push(msg.into());
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Each problem with `prefix: ` in front, e.g. the flag that led to it.
    pub fn prefixed(self, prefix: &str) -> Problems {
        Problems(self.0.into_iter().map(|m| format!("{prefix}: {m}")).collect())
    }

    /// `Err(self)` when any problem was found.
    pub fn into_result(&mut self) -> Result<(), Problems> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(std::mem::take(self))
        }
    }
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.join("\n"))
    }
}

impl std::error::Error for Problems {}

/// Returns early with a one-line user error.
#[macro_export]
macro_rules! bail_user {
    ($($arg:tt)*) => {
        return Err($crate::error::Problems::one(format!($($arg)*)).into())
    };
}

/// Levenshtein distance, for did-you-mean suggestions.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// The candidate closest to `input`, if it is close enough to be a likely typo.
pub fn did_you_mean<'a>(input: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (edit_distance(input, c), c))
        .filter(|(d, c)| *d <= (c.len().max(input.len()) / 3).max(2))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}
