//! The blocks a cut took, with the generation it closed.

use crate::geometry::BlockSet;
use std::ops::Deref;

/// The blocks a cut took: an immutable [`BlockSet`] and the generation it
/// closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrozenSet {
    generation: u64,
    set: BlockSet,
}

impl FrozenSet {
    pub(crate) fn new(generation: u64, set: BlockSet) -> Self {
        FrozenSet { generation, set }
    }

    /// The generation this cut closed; generations count up from 1.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The set of blocks.
    pub fn set(&self) -> &BlockSet {
        &self.set
    }

    /// Gives up the generation number and keeps the set.
    pub fn into_set(self) -> BlockSet {
        self.set
    }
}

impl Deref for FrozenSet {
    type Target = BlockSet;
    fn deref(&self) -> &BlockSet {
        &self.set
    }
}
