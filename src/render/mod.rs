//! Placeholder copy of the render stage's output type, so that `apply` and `snapshot`
//! compile on their own branch. The lead drops this file at merge in favour of the
//! real `src/render`.

use serde::{Deserialize, Serialize};

/// One object of a revision, with where it came from (for error messages).
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Manifest {
    pub object: serde_json::Value,
    pub file: String,
    pub line: usize,
}
