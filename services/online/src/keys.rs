//! Key naming.

/// The keys under one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Keys under `prefix`.
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_string(),
        }
    }

    /// The hash of one entity of one view.
    pub fn entity(&self, view: &str, entity: &str) -> String {
        format!("{}:{view}:{entity}", self.prefix)
    }

    /// Every entity of a view, as a `SCAN` pattern.
    pub fn view_pattern(&self, view: &str) -> String {
        format!("{}:{view}:*", self.prefix)
    }

    /// The claims of one source partition (`#` cannot start a view name, so no entity key
    /// collides with it).
    pub fn claims(&self, source: &str, partition: i32) -> String {
        format!("{}:#claims:{source}:{partition}", self.prefix)
    }

    /// The fingerprint of the definition a view's online state was written under.
    pub fn definition(&self, view: &str) -> String {
        format!("{}:#definition:{view}", self.prefix)
    }

    /// How far each partition's shards of a view are written (fields: partitions; values: the
    /// last offset of the last flush whose shards are all written).
    pub fn applied(&self, view: &str) -> String {
        format!("{}:#applied:{view}", self.prefix)
    }

    /// Every claims hash of a source, as a `SCAN` pattern.
    pub fn claims_pattern(&self, source: &str) -> String {
        format!("{}:#claims:{source}:*", self.prefix)
    }
}
