//! Monitoring a deployed model: how its live inputs and scores compare with the training
//! baseline the registry keeps (`quiver_models::Baseline`), and how well it performs — against
//! labels once they arrive, estimated from its own scores before.
//!
//! Everything here is pure (no I/O) and unit-tested on its own; the numbers the tests expect
//! were computed with scipy 1.17.1.

pub mod drift;
pub mod estimate;
pub mod report;
pub mod retrain;
pub mod stats;
pub mod tracker;

pub use drift::{Drift, DriftTest, drift_share};
pub use estimate::estimated_roc_auc;
pub use report::{ModelReport, Observation, Window, report};
pub use tracker::{Limits, Seen, Slot, Tracker};
