//! This node among others sharing one PostgreSQL database: its identity and role, the lease
//! that makes exactly one node the learner, and the models the learner publishes.
//!
//! Every node serves. The learner (the holder of the `learner` lease, a row with a term and
//! an expiry by the database's clock, see `store::Leases`) runs the update scheduler and
//! stores every new model version at once and announces it (NOTIFY); the other nodes install
//! versions newer than theirs, the way a single node installs its own (a fresh pool of
//! serving instances, switched in one step), when announced or at their next poll (every
//! second), whichever comes first.
//!
//! **Safety.** A node counts itself the learner until `sent + lease - margin`, where `sent`
//! is when it sent its last successful claim. The database set the lease's expiry to its own
//! clock at the claim plus the full lease, later than `sent`, so a learner cut off from the
//! database stops learning before any other node can take the lease. What a stale learner
//! could still do is fenced by the database anyway: model versions are handed out by it
//! (`allocate_model_versions`), never by a node, so no version is ever reused.
//!
//! **Failover.** When the learner dies, its lease expires within `lease_secs` and the next
//! node to claim it (each tries every `lease_secs / 3`) first installs the newest stored
//! models, then learns the events after each one's `through_event` (they are in its buffer
//! or the store). A learner that stops cleanly gives the lease up, so another node takes
//! over at its next claim.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::experiments::Experiments;
use crate::learning::Learning;
use crate::plugins::{LivePlugins, ModelVersion};
use crate::store::{Fence, Store};

/// The name of the learner's lease.
const LEARNER_LEASE: &str = "learner";
/// Where the learner announces each new model it stored (LISTEN/NOTIFY).
pub const MODELS_CHANNEL: &str = "recohost_models";

/// What a node does in a cluster (`[cluster] role`, `--role`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Serves, and stands for election as the learner.
    #[default]
    All,
    /// Serves only: never the learner.
    Serve,
}

/// Whether this node is the learner now.
pub struct Learner {
    /// A single node on SQLite: always the learner, no lease.
    always: bool,
    /// Who claims the lease: the node id and a random part of this process's own, so that
    /// two processes given the same `node_id` (or a node restarted within its old lease)
    /// are never both the holder.
    holder: String,
    /// Until when this node may act as the learner (its own clock).
    held_until: Mutex<Option<Instant>>,
    /// The lease's term while held.
    term: AtomicU64,
}

impl Learner {
    /// The only node there is.
    pub fn always() -> Self {
        Self {
            always: true,
            holder: String::new(),
            held_until: Mutex::new(None),
            term: AtomicU64::new(0),
        }
    }

    /// A node of a cluster: the learner while it holds the lease.
    pub fn by_lease(node_id: &str) -> Self {
        Self {
            always: false,
            holder: format!("{node_id}/{:08x}", rand::random::<u32>()),
            ..Self::always()
        }
    }

    /// What the database checks before handing out model versions: this node's claim on
    /// the lease (whether or not it still holds it). `None` for a single node.
    pub fn fence(&self) -> Option<Fence> {
        (!self.always).then(|| Fence {
            lease: LEARNER_LEASE,
            holder: self.holder.clone(),
            term: self.term.load(Ordering::Relaxed),
        })
    }

    pub fn is_learner(&self) -> bool {
        self.always
            || self
                .held_until
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_some_and(|until| Instant::now() < until)
    }

    /// The lease's term while this node holds it.
    pub fn term(&self) -> Option<u64> {
        (!self.always && self.is_learner()).then(|| self.term.load(Ordering::Relaxed))
    }

    fn hold(&self, until: Option<Instant>, term: u64) {
        if until.is_some() {
            self.term.store(term, Ordering::Relaxed);
        }
        *self.held_until.lock().unwrap_or_else(|p| p.into_inner()) = until;
    }
}

/// This node as `/health` and `/plugins` describe it.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct NodeReport {
    /// This node's id (`[cluster] node_id`, else host name and process id).
    pub id: String,
    pub role: Role,
    /// Whether this node runs the learning now.
    pub learner: bool,
    /// The learner lease's term, while this node holds it.
    pub term: Option<u64>,
}

/// This node: who it is, what it may do, whether it learns.
pub struct Node {
    pub id: String,
    pub role: Role,
    pub learner: Arc<Learner>,
    /// Cluster mode: a lease to hold and models to follow (PostgreSQL); else a single node.
    clustered: bool,
    stopping: AtomicBool,
    /// The cluster thread, joined when the node resigns.
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Node {
    /// A single node (SQLite): always the learner.
    pub fn single(id: String) -> Self {
        Self {
            id,
            role: Role::All,
            learner: Arc::new(Learner::always()),
            clustered: false,
            stopping: AtomicBool::new(false),
            thread: Mutex::new(None),
        }
    }

    /// A node of a cluster: learns only while it holds the lease.
    pub fn clustered(id: String, role: Role) -> Self {
        Self {
            learner: Arc::new(Learner::by_lease(&id)),
            id,
            role,
            clustered: true,
            stopping: AtomicBool::new(false),
            thread: Mutex::new(None),
        }
    }

    /// Whether this node shares its database with others (PostgreSQL).
    pub fn in_cluster(&self) -> bool {
        self.clustered
    }

    pub fn report(&self) -> NodeReport {
        NodeReport {
            id: self.id.clone(),
            role: self.role,
            learner: self.learner.is_learner(),
            term: self.learner.term(),
        }
    }

    /// Starts the thread that claims the lease (role `all`) and follows the learner's models
    /// while this node is not the learner. Nothing to do for a single node. `store` should be
    /// a connection of the thread's own: a claim must not wait behind the event writer.
    pub fn start(
        self: &Arc<Self>,
        store: Arc<Store>,
        learning: Arc<Learning>,
        plugins: Arc<LivePlugins>,
        experiments: Arc<Experiments>,
        lease: Duration,
    ) -> std::io::Result<()> {
        if !self.clustered {
            return Ok(());
        }
        let node = self.clone();
        let thread = std::thread::Builder::new()
            .name("cluster".into())
            .spawn(move || node.run(&store, &learning, &plugins, &experiments, lease))?;
        *self.thread.lock().unwrap_or_else(|p| p.into_inner()) = Some(thread);
        Ok(())
    }

    /// Stops claiming, waits for the claim under way, and gives the lease up (a clean
    /// shutdown, once the learning has stopped and the models are stored): another node
    /// takes over at its next claim instead of after the expiry.
    pub fn resign(&self, store: &Store) {
        self.stopping.store(true, Ordering::Relaxed);
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
        if self.clustered {
            self.learner.hold(None, 0);
            // Released only if this process holds it (the holder names the process).
            match store.release_lease(LEARNER_LEASE, &self.learner.holder) {
                Ok(()) => tracing::info!(node = %self.id, "left the learner election"),
                Err(error) => {
                    tracing::warn!(%error, "cannot give up the learner lease; it expires by itself")
                }
            }
        }
    }

    fn run(
        &self,
        store: &Store,
        learning: &Learning,
        plugins: &LivePlugins,
        experiments: &Experiments,
        lease: Duration,
    ) {
        // Claims three times per lease: two in a row may fail before the lease lapses.
        let every = (lease / 3).min(Duration::from_secs(1));
        // Our own deadline ends this much before the database's, for clock rates that differ
        // and the time a claim takes to arrive.
        let margin = lease / 5;
        let lease_ms = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX);
        let mut listener: Option<Box<dyn crate::store::Listener>> = None;
        // Stored models this node cannot follow (made by another .wasm, config or catalog),
        // by plugin: the newest one warned about.
        let mut warned = std::collections::HashMap::new();
        while !self.stopping.load(Ordering::Relaxed) {
            let started = Instant::now();
            if self.role == Role::All {
                let was_learner = self.learner.is_learner();
                match store.acquire_lease(LEARNER_LEASE, &self.learner.holder, lease_ms) {
                    Ok(Some(term)) if !self.stopping.load(Ordering::Relaxed) => {
                        if !was_learner {
                            // Before learning: the newest models the last learner stored,
                            // and the learning record it left; only then may jobs start.
                            follow_models(store, plugins, learning, &mut warned);
                            learning.take_over();
                            tracing::info!(node = %self.id, term, "this node is the learner now");
                        }
                        self.learner
                            .hold(Some(started + lease.saturating_sub(margin)), term);
                    }
                    Ok(_) => {
                        if was_learner {
                            tracing::warn!(node = %self.id, "another node holds the learner lease now");
                        }
                        self.learner.hold(None, 0);
                    }
                    // Unreachable database: the lease lapses by itself at `held_until`.
                    Err(error) => {
                        tracing::warn!(%error, "cannot claim the learner lease");
                    }
                }
            }
            if !self.learner.is_learner() {
                follow_models(store, plugins, learning, &mut warned);
            }
            follow_experiments(store, experiments);
            // Until the next claim: woken early by the learner's announcement of a new model.
            let next_claim = started + every;
            loop {
                let left = next_claim.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                let announced = match &listener {
                    Some(waiting) => waiting.wait(left).unwrap_or_else(|error| {
                        tracing::warn!(%error, "stopped listening for new models; polling");
                        listener = None;
                        false
                    }),
                    None => {
                        listener = store.listen(MODELS_CHANNEL).ok();
                        if listener.is_none() {
                            std::thread::sleep(left);
                        }
                        false
                    }
                };
                if announced && !self.learner.is_learner() {
                    follow_models(store, plugins, learning, &mut warned);
                }
            }
        }
    }
}

/// Installs, for each plugin, the newest model stored for it if it is newer than the one
/// serving and was made by the same plugin, config and catalog (one made by another is
/// warned about once: that node's plugins or catalog differ from this one's). Then the
/// learning buffer lets go of what the installed models have learned.
fn follow_models(
    store: &Store,
    plugins: &LivePlugins,
    learning: &Learning,
    warned: &mut std::collections::HashMap<String, u64>,
) {
    let mut installed = false;
    for plugin in plugins.current().iter() {
        let serving = plugin.model_version().unwrap_or(0);
        let newest = match store.latest_snapshot_version(plugin.name()) {
            Ok(Some(newest)) if newest > serving => newest,
            Ok(_) => continue,
            Err(error) => {
                tracing::warn!(plugin = plugin.name(), %error, "cannot look for new models");
                return;
            }
        };
        let snapshot = match store.latest_snapshot(plugin.name()) {
            Ok(Some(snapshot)) if snapshot.fingerprint == plugin.fingerprint() => snapshot,
            Ok(Some(snapshot)) => {
                if warned.insert(plugin.name().to_string(), snapshot.version)
                    != Some(snapshot.version)
                {
                    tracing::warn!(
                        plugin = plugin.name(),
                        version = snapshot.version,
                        "cannot follow the newest stored model: another node made it with \
                         another .wasm, plugin config or catalog (give every node the same)"
                    );
                }
                continue;
            }
            Ok(None) => continue,
            Err(error) => {
                tracing::warn!(plugin = plugin.name(), %error, "cannot read a new model");
                return;
            }
        };
        let version = snapshot.version;
        let model = ModelVersion {
            version,
            snapshot: Arc::new(snapshot.bytes),
            created_at: snapshot.created_at,
            through_event: snapshot.through_event,
        };
        match plugin.install(model) {
            Ok(()) => {
                installed = true;
                tracing::info!(
                    plugin = plugin.name(),
                    version,
                    newest,
                    "installed the model the learner published"
                );
            }
            Err(error) => {
                tracing::warn!(plugin = plugin.name(), version, %error, "cannot install a published model")
            }
        }
    }
    if installed {
        learning.followed();
    }
}

/// Puts the newest published experiment revision in force if it is newer than the one in
/// force (every node polls each second, so an edit published through any node is in force
/// everywhere within about a second), and takes in the sticky assignments other nodes made
/// and the bandits' newest weights.
pub fn follow_experiments(store: &Store, experiments: &Experiments) {
    if let Err(error) = experiments.follow_sticky(store) {
        tracing::warn!(%error, "cannot read the other nodes' sticky assignments");
    }
    if let Err(error) = experiments.follow_weights(store) {
        tracing::warn!(%error, "cannot read the bandits' weights");
    }
    let applied = experiments.current().revision.unwrap_or(0);
    let newest = store.latest_experiment_revision();
    if let Ok(newest) = newest {
        experiments.saw_published(newest);
    }
    match newest {
        Ok(newest) if newest > applied => {}
        Ok(_) => return,
        Err(error) => {
            tracing::warn!(%error, "cannot look for published experiments");
            return;
        }
    }
    match store.latest_experiments() {
        // An invalid revision is logged and reported by `apply_revision`; the set stays.
        Ok(Some((revision, files))) => {
            let _ = experiments.apply_revision(revision, &files);
        }
        Ok(None) => {}
        Err(error) => tracing::warn!(%error, "cannot read the published experiments"),
    }
}

/// A node id for a node that was given none: host name and process id.
pub fn default_node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_string())
        .unwrap_or_else(|_| "node".into());
    format!("{host}-{}", std::process::id())
}
