//! What a recommendation needs of its user: their newest events (sent to the plugin), every
//! item they had an event with (never recommended to them) and their version (the cache
//! key's user part). Two homes, one interface:
//!
//! - **One node** ([`Features::Local`]): every user's history in this process's memory
//!   ([`Users`]), as it was always kept.
//! - **A cluster** ([`Features::Shared`], `shared.rs`): in Redis, the online feature store
//!   the nodes share, with PostgreSQL behind it. A node then keeps only each user's event
//!   count and newest event id (16 bytes a user, from the event log it follows anyway) and a
//!   small cache of the users it served lately, instead of every user's history.
//!
//! Either way an event stored by any node changes what every node serves that user within
//! the event writer's catch-up interval (200 ms).

mod shared;

use std::sync::{Arc, RwLock};

use serde::Serialize;

use crate::catalog::Users;
use crate::plugins::bindings::Feedback;
use crate::store::EventRow;

pub use shared::SharedFeatures;

/// One user as a recommendation sees them.
#[derive(Clone, Debug, Default)]
pub struct UserFeatures {
    /// How many events they have.
    pub version: u64,
    /// The id of their newest event these features include (0: none).
    pub through: i64,
    /// Their newest events, newest first, at most `history_limit`.
    pub history: Vec<Feedback>,
    /// Every item they had an event with, ascending.
    pub exclude: Vec<u32>,
}

/// Where users' features are kept.
pub enum Features {
    /// In this process's memory: a single node.
    Local {
        users: Arc<RwLock<Users>>,
        history_limit: usize,
    },
    /// In Redis, shared by a cluster's nodes, with PostgreSQL behind it.
    Shared(Arc<SharedFeatures>),
}

/// How the feature store has been doing, for `/health`.
#[derive(Clone, Debug, Default, Serialize, utoipa::ToSchema)]
pub struct FeatureReport {
    /// `memory` (one node) or `redis` (a cluster).
    pub backend: &'static str,
    /// Reads answered by this node's cache of recent users.
    pub local_hits: u64,
    /// Reads answered by Redis.
    pub shared_hits: u64,
    /// Reads Redis could not answer (down, missing or behind the event log), answered from
    /// PostgreSQL and written back to Redis.
    pub rebuilds: u64,
    /// Reads no store could answer: served without the user's history, never cached.
    pub unavailable: u64,
    /// Redis errors and timeouts.
    pub faults: u64,
}

impl Features {
    /// User `index`'s features, current with every event this node has taken in. Never
    /// fails: when nothing can be read, the answer has `through < 0` (see
    /// [`UserFeatures::is_complete`]).
    pub async fn user(&self, index: u32) -> UserFeatures {
        match self {
            Self::Local {
                users,
                history_limit,
            } => {
                let users = users.read().unwrap_or_else(|p| p.into_inner());
                // A single node keeps histories from the end of start-up (`None` only on a
                // cluster node, which reads features from the shared store).
                let full = users.history(index);
                debug_assert!(full.is_some(), "a single node without histories");
                let history = full.as_ref().map_or_else(Vec::new, |full| {
                    full.events().rev().take(*history_limit).collect()
                });
                let mut exclude: Vec<u32> = full
                    .as_ref()
                    .map_or_else(Vec::new, |full| full.items().collect());
                exclude.sort_unstable();
                exclude.dedup();
                UserFeatures {
                    version: users.version(index),
                    through: users.newest_event(index),
                    history,
                    exclude,
                }
            }
            Self::Shared(shared) => shared.user(index).await,
        }
    }

    /// User `index`'s newest `limit` events, newest first: all of them on a single node,
    /// at most `history_limit` in a cluster (what the feature store keeps).
    pub async fn recent_events(&self, index: u32, limit: usize) -> Vec<Feedback> {
        match self {
            Self::Local { users, .. } => {
                let users = users.read().unwrap_or_else(|p| p.into_inner());
                users
                    .history(index)
                    .map(|full| full.events().rev().take(limit).collect())
                    .unwrap_or_default()
            }
            Self::Shared(shared) => {
                let mut history = shared.user(index).await.history;
                history.truncate(limit);
                history
            }
        }
    }

    /// Takes stored events in, oldest first, each with its user's previous newest event id
    /// (what [`Users::record`] returned). Called by the event writer's thread; blocking.
    pub fn recorded(&self, events: &[(EventRow, i64)]) {
        if let Self::Shared(shared) = self {
            shared.recorded(events);
        }
    }

    pub fn report(&self) -> FeatureReport {
        match self {
            Self::Local { .. } => FeatureReport {
                backend: "memory",
                ..FeatureReport::default()
            },
            Self::Shared(shared) => shared.report(),
        }
    }
}

impl UserFeatures {
    /// Whether these are the user's features (`false`: none could be read, and an answer
    /// built from them must not be cached under the user's version).
    pub fn is_complete(&self) -> bool {
        self.through >= 0
    }
}
