//! The cluster builder: every setting with its default, validated in one
//! place, and `start()`, which turns them into a running [`Node`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::{Node, selfform};
use crate::discovery::DiscoverySource;
use crate::error::{Error, Result};
use crate::raft::{RaftHandle, RaftSettings};

/// Starts building a node: `catga::cluster().node_id(1).listen(..).peer(..).data_dir(..).start()`.
pub fn cluster() -> ClusterBuilder {
    ClusterBuilder::default()
}

/// Settings of one node. Every setting has a default except `node_id`,
/// `listen` and `data_dir`. [`ClusterBuilder::start`] validates them all and
/// names the setting that is wrong.
pub struct ClusterBuilder {
    node_id: Option<u64>,
    listen: Option<String>,
    listener: Option<std::net::TcpListener>,
    advertise: Option<String>,
    api_addr: Option<String>,
    peers: Vec<(u64, String)>,
    join: bool,
    data_dir: Option<PathBuf>,
    heartbeat: Duration,
    election: (Duration, Duration),
    snapshot_every: u64,
    keep_logs: u64,
    log_reserve: u64,
    request_timeout: Duration,
    secret: Option<String>,
    tls: Option<crate::tls::TlsConfig>,
    insecure_plaintext: bool,
    max_frame_bytes: usize,
    max_in_flight: usize,
    event_deadline: Option<Duration>,
    slow_event_handler: Duration,
    ready_max_lag: u64,
    discovery: Option<DiscoverySource>,
    cluster_name: Option<String>,
    bootstrap_expect: Option<usize>,
    voters: Option<usize>,
    remove_dead_after: Option<Duration>,
    remove_learners_after: Option<Duration>,
    discovery_timings: Option<(Duration, Duration)>,
    quarantine: super::Quarantine,
}

impl Default for ClusterBuilder {
    fn default() -> Self {
        ClusterBuilder {
            node_id: None,
            listen: None,
            listener: None,
            advertise: None,
            api_addr: None,
            peers: Vec::new(),
            join: false,
            data_dir: None,
            heartbeat: Duration::from_millis(50),
            election: (Duration::from_millis(150), Duration::from_millis(300)),
            snapshot_every: 100_000,
            keep_logs: 1_000,
            log_reserve: 4 << 20,
            request_timeout: Duration::from_secs(5),
            secret: None,
            tls: None,
            insecure_plaintext: false,
            max_frame_bytes: 64 << 20,
            max_in_flight: 16_384,
            event_deadline: None,
            slow_event_handler: Duration::from_secs(5),
            ready_max_lag: 100,
            discovery: None,
            cluster_name: None,
            bootstrap_expect: None,
            voters: None,
            remove_dead_after: None,
            remove_learners_after: None,
            discovery_timings: None,
            quarantine: super::Quarantine::Automatic,
        }
    }
}

impl ClusterBuilder {
    /// This node's id: unique in the cluster and never reused by another
    /// node (even after this one is removed).
    pub fn node_id(mut self, id: u64) -> Self {
        self.node_id = Some(id);
        self
    }

    /// The address to listen on for other nodes, e.g. `"127.0.0.1:7001"`
    /// (port 0 picks a free port; see [`Node::local_addr`]).
    pub fn listen(mut self, addr: impl Into<String>) -> Self {
        self.listen = Some(addr.into());
        self
    }

    /// Listens on an already bound socket (tests bind port 0 first to learn
    /// every node's address before starting any). Instead of
    /// [`listen`](Self::listen): giving both is a start-up error.
    pub fn listener(mut self, listener: std::net::TcpListener) -> Self {
        self.listener = Some(listener);
        self
    }

    /// The address other nodes use to reach this one, if not the listen
    /// address (behind NAT, or when listening on 0.0.0.0).
    pub fn advertise(mut self, addr: impl Into<String>) -> Self {
        self.advertise = Some(addr.into());
        self
    }

    /// Where users reach this node's HTTP API (`host:port`, no scheme),
    /// e.g. `"10.0.0.5:8080"`: advertised to the other nodes (through
    /// discovery, and in the answers to their pings) and shown as
    /// `api_addr` by [`Node::members`] and the HTTP `/members` routes, so
    /// that operators and tools can find every node's API. Default: none.
    ///
    /// ```no_run
    /// # async fn f() -> catga::Result<()> {
    /// let node = catga::cluster()
    ///     .node_id(1)
    ///     .listen("10.0.0.5:7001")
    ///     .api_addr("10.0.0.5:8080") // where this node's HTTP server listens
    ///     .data_dir("data/1")
    ///     .start()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn api_addr(mut self, addr: impl Into<String>) -> Self {
        self.api_addr = Some(addr.into());
        self
    }

    /// Another member of the initial cluster.
    pub fn peer(mut self, id: u64, addr: impl Into<String>) -> Self {
        self.peers.push((id, addr.into()));
        self
    }

    /// Several peers at once.
    pub fn peers<A: Into<String>>(mut self, peers: impl IntoIterator<Item = (u64, A)>) -> Self {
        self.peers
            .extend(peers.into_iter().map(|(i, a)| (i, a.into())));
        self
    }

    /// Start as a new node that an existing cluster will add with
    /// [`Node::add_node`]; it never initializes a cluster itself.
    pub fn join_existing(mut self) -> Self {
        self.join = true;
        self
    }

    /// Where the Raft log, vote and snapshots are kept.
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// How often the Raft leader sends heartbeats to its followers (default
    /// 50 ms). The only "heartbeat" among the settings: discovery's lease is
    /// renewed every [`discovery_timings`](Self::discovery_timings), and the
    /// members' liveness comes from pings of their own (four a second).
    pub fn heartbeat_interval(mut self, d: Duration) -> Self {
        self.heartbeat = d;
        self
    }

    /// How long a follower waits without heartbeats before it starts an
    /// election: a random time in `[min, max)` (default 150–300 ms; in
    /// practice from `max / 2` + a heartbeat on, see
    /// `raft::handle::start::openraft_election`). A leader that no majority has
    /// answered for `max / 2` stops taking writes and reports it lost its
    /// quorum.
    pub fn election_timeout(mut self, min: Duration, max: Duration) -> Self {
        self.election = (min, max);
        self
    }

    /// Take a snapshot every `n` applied entries (default 100,000, as etcd;
    /// 0 = never) and purge the log behind it.
    ///
    /// A snapshot encodes the whole state (in a forked copy of the process)
    /// while writes go on; the log since the last one is kept in memory and
    /// replayed at a restart. Fewer snapshots cost less CPU under load (at
    /// 10,000 a loaded 3-node bench took ~10 % more CPU per write); more
    /// keep less log: about `n` × the average encoded command in memory, so
    /// lower it for large commands.
    pub fn snapshot_every(mut self, n: u64) -> Self {
        self.snapshot_every = n;
        self
    }

    /// How many entries to keep in the log behind a snapshot, so a slightly
    /// lagging follower catches up by log instead of by snapshot (default 1,000).
    pub fn snapshot_logs_to_keep(mut self, n: u64) -> Self {
        self.keep_logs = n;
        self
    }

    /// How many bytes of the Raft log file to zero-fill ahead of the writes
    /// (default 4 MiB; 0 = none). Writes into space the file already has
    /// are synced without its length or block map, one disk write less per
    /// commit. The reserve also lets a node whose disk fills keep logging
    /// until it is used up; with 0 the first write that finds the disk full
    /// stops the node.
    pub fn log_reserve(mut self, bytes: u64) -> Self {
        self.log_reserve = bytes;
        self
    }

    /// How long `send` and `publish` keep trying (through leader changes)
    /// before giving up (default 5 s).
    pub fn request_timeout(mut self, d: Duration) -> Self {
        self.request_timeout = d;
        self
    }

    /// The cluster secret. Nodes prove to each other that they know it
    /// before any Raft message is accepted; it never crosses the network.
    pub fn secret(mut self, secret: impl Into<String>) -> Self {
        self.secret = Some(secret.into());
        self
    }

    /// Mutual TLS between nodes: this node's certificate and key, and the
    /// CA that signed every node's (see [`TlsConfig`](crate::TlsConfig)
    /// and the security guide). Required, unless
    /// [`insecure_plaintext`](ClusterBuilder::insecure_plaintext), when the
    /// node listens on or advertises an address other hosts can reach.
    ///
    /// ```no_run
    /// # fn f() -> catga::Result<()> {
    /// let tls = catga::TlsConfig::from_pem_files("tls/ca.pem", "tls/node-1.pem", "tls/node-1.key")?;
    /// let b = catga::cluster().node_id(1).listen("10.0.0.1:7001").tls(tls);
    /// # drop(b); Ok(()) }
    /// ```
    pub fn tls(mut self, tls: crate::tls::TlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Runs without TLS on an address other hosts can reach: everything
    /// between nodes (commands, snapshots, answers) crosses the network in
    /// plaintext, readable and forgeable on the path; only the secret's
    /// handshake guards who connects. For a network you trust completely.
    /// Needs its own [`secret`](ClusterBuilder::secret); logs a WARN at start.
    pub fn insecure_plaintext(mut self) -> Self {
        self.insecure_plaintext = true;
        self
    }

    /// The largest message between nodes (default 64 MiB, at least 64 KiB).
    /// Snapshots are sent in chunks below it, so it does not bound the
    /// state's size; it bounds one command, event or batch of entries.
    pub fn max_frame_bytes(mut self, n: usize) -> Self {
        self.max_frame_bytes = n;
        self
    }

    /// How many commands and publishes one node handle may have in flight
    /// (default 16,384). Past that, callers wait for a slot, and get
    /// [`Error::Overloaded`] if none frees up within the request timeout.
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n;
        self
    }

    /// A deadline for each call of an event handler (default: none). A
    /// handler still running at its deadline is abandoned with a WARN and
    /// delivery moves on: its future is dropped, which cancels it at its
    /// next `.await`. Work it handed to other tasks or threads, or a handler
    /// that blocks its thread without awaiting, is not stopped by this.
    pub fn event_handler_timeout(mut self, d: Duration) -> Self {
        self.event_deadline = Some(d);
        self
    }

    /// An event handler running longer than this is reported: a WARN naming
    /// it (repeated at doubling intervals while it runs), and
    /// [`Health::ready`](crate::Health) is false meanwhile (default 5 s).
    /// Writes never wait for event handlers.
    pub fn slow_event_handler(mut self, d: Duration) -> Self {
        self.slow_event_handler = d;
        self
    }

    /// Who quarantines a poison pill, a log entry whose handler crashed
    /// every node that ran it: the leader at once (default,
    /// [`Quarantine::Automatic`](crate::Quarantine)) or an operator with
    /// [`Node::skip_poisoned`] ([`Quarantine::Manual`](crate::Quarantine)).
    pub fn quarantine(mut self, who: super::Quarantine) -> Self {
        self.quarantine = who;
        self
    }

    /// How many entries this node may be behind its leader's commit index
    /// and still be [`Health::ready`](crate::Health) (default 100).
    pub fn ready_max_lag(mut self, entries: u64) -> Self {
        self.ready_max_lag = entries;
        self
    }

    /// Finds the other nodes through a discovery store instead of a peer
    /// list: `.discovery(catga::discovery::redis("redis://127.0.0.1:6379"))`
    /// (cargo feature `redis`) or `catga::discovery::nats("nats://127.0.0.1:4222")`
    /// (feature `nats`), or a [`MemoryStore`](crate::discovery::MemoryStore)
    /// shared by the nodes of one process. `start()` then
    /// registers the node, renews its registration (reporting its in-flight requests as
    /// its load) and bootstraps a new cluster, joins the running one, or
    /// resumes from the data dir. Cannot be combined with `peer(..)`.
    ///
    /// The settings below it (`cluster_name`, `bootstrap_expect`,
    /// `remove_dead_after`, `remove_learners_after`, `discovery_timings`)
    /// only apply with discovery: without it, `start()` refuses them
    /// (`Error::Config` naming the setting) instead of ignoring them.
    ///
    /// ```no_run
    /// # #[cfg(feature = "redis")]
    /// # async fn f() -> catga::Result<()> {
    /// let node = catga::cluster()
    ///     .node_id(4)
    ///     .listen("127.0.0.1:7004")
    ///     .data_dir("data/4")
    ///     .discovery(catga::discovery::redis("redis://127.0.0.1:6379"))
    ///     .cluster_name("shop")
    ///     .bootstrap_expect(3)
    ///     .start()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn discovery(mut self, source: impl Into<DiscoverySource>) -> Self {
        self.discovery = Some(source.into());
        self
    }

    /// The cluster's name in the discovery store (default `catga`): only
    /// nodes of the same name see each other. Letters, digits, `-`, `_`.
    pub fn cluster_name(mut self, name: impl Into<String>) -> Self {
        self.cluster_name = Some(name.into());
        self
    }

    /// How many nodes of the cluster name must be seen (and stay the same
    /// for a moment) before a new cluster is formed (default: the voter
    /// target, 3). Only a pristine node forms a cluster, and only the one
    /// with the lowest id of those seen.
    pub fn bootstrap_expect(mut self, n: usize) -> Self {
        self.bootstrap_expect = Some(n);
        self
    }

    /// How many voters the cluster keeps (odd; default 3 with
    /// [`discovery`](Self::discovery), no limit with a static peer list):
    /// the leader promotes caught-up learners up to it, two at once from an
    /// odd count so that the count stays odd; nodes beyond it stay learners
    /// (they serve local queries and take over when a voter is removed).
    /// A leave or a removal that would leave an even count makes one more
    /// voter a learner (never the leader; the least caught-up, else the
    /// highest id), and the next node that joins brings it back.
    ///
    /// ```
    /// # #[cfg(feature = "nats")] {
    /// use std::time::Duration;
    /// let b = catga::cluster()
    ///     .discovery(catga::discovery::nats("nats://127.0.0.1:4222"))
    ///     .voters(5)
    ///     .remove_dead_after(Duration::from_secs(300))
    ///     .remove_learners_after(Duration::from_secs(600))
    ///     .discovery_timings(Duration::from_secs(1), Duration::from_secs(3));
    /// # drop(b);
    /// # }
    /// ```
    pub fn voters(mut self, n: usize) -> Self {
        self.voters = Some(n);
        self
    }

    /// Removes a voter whose discovery lease has been gone this long
    /// (default: never; a voter whose lease ran out is only suspect).
    pub fn remove_dead_after(mut self, d: Duration) -> Self {
        self.remove_dead_after = Some(d);
        self
    }

    /// Removes a learner whose discovery lease has been gone this long
    /// (default 10 minutes). A learner that leaves gracefully goes at once.
    pub fn remove_learners_after(mut self, d: Duration) -> Self {
        self.remove_learners_after = Some(d);
        self
    }

    /// How often this node renews its registration in the discovery store,
    /// and how long the registration lasts unrenewed (default 1 s and 3 s):
    /// a node that crashed is seen gone after `lease`.
    pub fn discovery_timings(mut self, renew_every: Duration, lease: Duration) -> Self {
        self.discovery_timings = Some((renew_every, lease));
        self
    }

    /// The settings that only apply with `discovery(..)`, checked: a node
    /// with a static peer list must set none of them (they would be
    /// ignored).
    fn check_static(&self) -> Result<()> {
        let set = [
            ("cluster_name", self.cluster_name.is_some()),
            ("bootstrap_expect", self.bootstrap_expect.is_some()),
            ("remove_dead_after", self.remove_dead_after.is_some()),
            (
                "remove_learners_after",
                self.remove_learners_after.is_some(),
            ),
            ("discovery_timings", self.discovery_timings.is_some()),
        ];
        match set.iter().find(|(_, on)| *on) {
            Some((setting, _)) => Err(Error::Config {
                setting,
                reason: format!(
                    "only applies to a node that finds the others through .discovery(..); this \
                     one has a static peer list (peer(..) / join_existing()), so `{setting}` \
                     would be ignored: drop it, or add .discovery(..)"
                ),
            }),
            None => Ok(()),
        }
    }

    /// The self-forming settings of a node started with `discovery(..)`
    /// (`source`), checked.
    fn validate_selfform(
        &self,
        source: &DiscoverySource,
        advertise: &str,
    ) -> Result<selfform::Settings> {
        let bad = |setting: &'static str, reason: String| Error::Config { setting, reason };
        if !self.peers.is_empty() {
            return Err(bad(
                "discovery",
                "use either peer(..) or discovery(..), not both".into(),
            ));
        }
        if self.join {
            return Err(bad(
                "join_existing",
                "a discovered node joins by itself; drop join_existing()".into(),
            ));
        }
        let cluster_name = match (source.fixed_cluster(), &self.cluster_name) {
            (Some(fixed), Some(mine)) if fixed != mine => {
                return Err(bad(
                    "cluster_name",
                    format!("`{mine}`, but the discovery given serves `{fixed}`"),
                ));
            }
            (Some(fixed), _) => fixed.to_string(),
            (None, Some(mine)) => mine.clone(),
            (None, None) => "catga".to_string(),
        };
        let voters = self.voters.unwrap_or(3);
        let expect = self.bootstrap_expect.unwrap_or(voters);
        if expect == 0 {
            return Err(bad("bootstrap_expect", "must be at least 1".into()));
        }
        let (renew_every, lease) = self
            .discovery_timings
            .unwrap_or((Duration::from_secs(1), Duration::from_secs(3)));
        let settings = selfform::Settings {
            cluster_name,
            advertise: advertise.to_string(),
            api_addr: self.api_addr.clone(),
            bootstrap_expect: expect,
            voters,
            remove_dead_after: self.remove_dead_after,
            remove_learners_after: self
                .remove_learners_after
                .unwrap_or(Duration::from_secs(600)),
            renew_every,
            lease,
            catch_up_lag: self.ready_max_lag.max(16),
        };
        settings
            .discovery_config()
            .validate()
            .map_err(|e| bad("discovery_timings / cluster_name", e.to_string()))?;
        Ok(settings)
    }

    fn validate(self) -> Result<(RaftSettings, Duration)> {
        let bad = |setting: &'static str, reason: String| Error::Config { setting, reason };
        let node_id = self
            .node_id
            .ok_or_else(|| bad("node_id", "required: call .node_id(n)".into()))?;
        let listen_str = match (&self.listen, &self.listener) {
            (Some(_), Some(_)) => {
                return Err(bad(
                    "listener",
                    "listen(..) and listener(..) both given: the node would advertise one and \
                     serve on the other; keep one"
                        .into(),
                ));
            }
            (Some(l), None) => l.clone(),
            (None, Some(l)) => l
                .local_addr()
                .map_err(|e| bad("listener", e.to_string()))?
                .to_string(),
            (None, None) => {
                return Err(bad(
                    "listen",
                    "required: call .listen(\"127.0.0.1:7001\")".into(),
                ));
            }
        };
        let listen: SocketAddr = listen_str.parse().map_err(|e| {
            bad(
                "listen",
                format!("`{listen_str}` is not an ip:port socket address ({e})"),
            )
        })?;
        let data_dir = self
            .data_dir
            .ok_or_else(|| bad("data_dir", "required: call .data_dir(\"data/1\")".into()))?;
        let mut members = BTreeMap::new();
        let mut seen = BTreeSet::new();
        for (id, addr) in &self.peers {
            if *id == node_id {
                return Err(bad("peer", format!("peer {id} has this node's own id")));
            }
            if !seen.insert(*id) {
                return Err(bad("peer", format!("peer {id} is given twice")));
            }
            check_addr(addr).map_err(|r| bad("peer", format!("peer {id}: {r}")))?;
            members.insert(*id, addr.clone());
        }
        if let Some(a) = &self.advertise {
            check_addr(a).map_err(|r| bad("advertise", r))?;
        }
        if let Some(a) = &self.api_addr {
            check_api_addr(a).map_err(|r| bad("api_addr", r))?;
        }
        let me = self.advertise.clone().unwrap_or_else(|| listen_str.clone());
        members.insert(node_id, me);
        let voters = match self.voters {
            Some(n) if n == 0 || n.is_multiple_of(2) => {
                return Err(bad(
                    "voters",
                    format!("{n} voters: use an odd number (1, 3, 5...)"),
                ));
            }
            Some(n) if !self.join && self.discovery.is_none() && members.len() > n => {
                return Err(bad(
                    "voters",
                    format!(
                        "{n} voters, but {} members are listed (this node and its peers): list \
                         at most {n}, and add the others with add_node (they stay learners)",
                        members.len()
                    ),
                ));
            }
            Some(n) => n,
            None if self.discovery.is_some() => 3,
            None => usize::MAX,
        };
        let hb = self.heartbeat.as_millis() as u64;
        let (emin, emax) = (
            self.election.0.as_millis() as u64,
            self.election.1.as_millis() as u64,
        );
        if hb == 0 {
            return Err(bad("heartbeat_interval", "must be at least 1 ms".into()));
        }
        if emin <= hb * 2 {
            return Err(bad(
                "election_timeout",
                format!(
                    "the minimum ({emin} ms) must exceed twice the heartbeat interval ({hb} ms)"
                ),
            ));
        }
        if emax <= emin {
            return Err(bad(
                "election_timeout",
                format!("the maximum ({emax} ms) must exceed the minimum ({emin} ms)"),
            ));
        }
        if self.request_timeout < Duration::from_millis(1) {
            return Err(bad("request_timeout", "must be at least 1 ms".into()));
        }
        if self.max_in_flight == 0 || self.max_in_flight > crate::dedup::MAX_CACHED_PER_CLIENT {
            return Err(bad(
                "max_in_flight",
                format!(
                    "must be between 1 and {}",
                    crate::dedup::MAX_CACHED_PER_CLIENT
                ),
            ));
        }
        if self
            .event_deadline
            .is_some_and(|d| d < Duration::from_millis(1))
        {
            return Err(bad("event_handler_timeout", "must be at least 1 ms".into()));
        }
        if self.slow_event_handler < Duration::from_millis(1) {
            return Err(bad("slow_event_handler", "must be at least 1 ms".into()));
        }
        if self.max_frame_bytes < 64 << 10 {
            return Err(bad("max_frame_bytes", "must be at least 64 KiB".into()));
        }
        // secure by default: an address other hosts can reach needs TLS,
        // or an explicit opt-out
        let mut exposed = Vec::new();
        if !listen.ip().is_loopback() {
            exposed.push(format!("listens on {listen}"));
        }
        if let Some(a) = self.advertise.as_deref().filter(|a| !is_loopback(a)) {
            exposed.push(format!("advertises {a}"));
        }
        match (&self.tls, self.insecure_plaintext) {
            (Some(_), true) => {
                return Err(bad(
                    "insecure_plaintext",
                    "contradicts tls(..): keep one of them".into(),
                ));
            }
            (None, false) if !exposed.is_empty() => {
                return Err(bad(
                    "tls",
                    format!(
                        "this node {}, which other hosts can reach, and TLS is off: configure                          .tls(catga::TlsConfig::from_pem_files(ca, cert, key)) (see the security                          guide), or call .insecure_plaintext() on a network you trust",
                        exposed.join(" and ")
                    ),
                ));
            }
            (None, true) => tracing::warn!(
                "insecure_plaintext: traffic between nodes is not encrypted: anyone on the path \
                 can read and alter commands, answers and snapshots; configure .tls(..)"
            ),
            _ => {}
        }
        let secret = match self.secret {
            Some(s) if s.is_empty() => return Err(bad("secret", "must not be empty".into())),
            Some(s) => s.into_bytes(),
            None if self.tls.is_none() && !exposed.is_empty() => {
                return Err(bad(
                    "secret",
                    "without TLS, a node other hosts can reach needs its own .secret(..) (the \
                     built-in one serves loopback-only clusters)"
                        .into(),
                ));
            }
            // loopback only, or TLS (the certificates say who is a member):
            // the handshake's secret is a formality
            None => b"catga-default-secret".to_vec(),
        };
        Ok((
            RaftSettings {
                node_id,
                listen,
                listener: self.listener,
                advertise: self.advertise,
                members,
                join: self.join,
                data_dir,
                heartbeat_ms: hb,
                election_min_ms: emin,
                election_max_ms: emax,
                snapshot_every: self.snapshot_every,
                keep_logs: self.keep_logs,
                log_reserve: self.log_reserve,
                secret,
                tls: self.tls,
                max_frame_bytes: self.max_frame_bytes,
                events: crate::raft::DeliverySettings {
                    deadline: self.event_deadline,
                    slow_after: self.slow_event_handler,
                },
                ready_max_lag: self.ready_max_lag,
                quarantine: self.quarantine.into(),
                voters,
            },
            self.request_timeout,
        ))
    }

    /// Checks every setting, opens the data dir, starts listening and joins
    /// (or, on the member with the smallest id and a pristine log, forms)
    /// the cluster. Returns once the node runs; it need not have a leader yet.
    pub async fn start(self) -> Result<Node> {
        let plan = self.plan()?;
        crate::registry::Registry::global()?;
        match plan.discovery {
            None => start_static(plan.node).await,
            Some((source, sf)) => start_discovered(plan.node, source, sf).await,
        }
    }

    /// Every setting checked, for one of the two modes: a static peer list,
    /// or discovery.
    fn plan(mut self) -> Result<Plan> {
        let discovery = match self.discovery.clone() {
            Some(source) => {
                let listen = self.listen.clone().or_else(|| {
                    self.listener
                        .as_ref()
                        .and_then(|l| l.local_addr().ok())
                        .map(|a| a.to_string())
                });
                let me = self.advertise.clone().or(listen).unwrap_or_default();
                let sf = self.validate_selfform(&source, &me)?;
                // a discovered node never bootstraps from a peer list
                self.join = true;
                Some((source, sf))
            }
            None => {
                self.check_static()?;
                None
            }
        };
        let api_addr = self.api_addr.clone();
        let max_in_flight = self.max_in_flight;
        let (raft, request_timeout) = self.validate()?;
        Ok(Plan {
            node: NodePlan {
                raft,
                request_timeout,
                max_in_flight,
                api_addr,
            },
            discovery,
        })
    }
}

/// What `start` starts, every setting checked.
struct Plan {
    node: NodePlan,
    /// With `discovery(..)`: the store and the self-forming settings.
    discovery: Option<(DiscoverySource, selfform::Settings)>,
}

/// The settings of the node itself (both modes).
struct NodePlan {
    raft: RaftSettings,
    request_timeout: Duration,
    max_in_flight: usize,
    api_addr: Option<String>,
}

impl NodePlan {
    /// Starts the Raft side and the node over it.
    async fn start(self) -> Result<Node> {
        let raft = RaftHandle::start(self.raft).await?;
        let node = Node::new(raft, self.max_in_flight, self.request_timeout);
        if let Some(a) = self.api_addr {
            node.mediator().set_api_addr(a);
        }
        Ok(node)
    }
}

/// A node of a static cluster: its peers are listed (or it waits for
/// `add_node`, with `join_existing()`).
async fn start_static(plan: NodePlan) -> Result<Node> {
    let s = &plan.raft;
    let (id, dir) = (s.node_id, s.data_dir.clone());
    let how = if s.join {
        "empty until a member calls add_node".to_string()
    } else if s.members.len() == 1 {
        "a cluster of one (no peers)".to_string()
    } else {
        format!("members {:?}", s.members.keys().collect::<Vec<_>>())
    };
    let node = plan.start().await?;
    // one line that says what this node is, so a first run shows
    // something without openraft's own INFO lines
    tracing::info!(
        "node {id} started on {}, data dir {}: {how}",
        node.local_addr(),
        dir.display()
    );
    Ok(node)
}

/// A node that finds the others through a discovery store: it connects to
/// the store, starts, then registers and forms, joins or resumes the
/// cluster (a member resumes without the store and registers later).
async fn start_discovered(
    plan: NodePlan,
    source: DiscoverySource,
    mut sf: selfform::Settings,
) -> Result<Node> {
    let discovery = selfform::connect(source.clone(), &sf).await;
    if let Err(e) = &discovery
        && !selfform::store_unreachable(e)
    {
        return Err(discovery.err().unwrap_or(Error::ShutDown));
    }
    let node = plan.start().await?;
    if sf.advertise.ends_with(":0") {
        sf.advertise = node.local_addr().to_string();
    }
    let started = match discovery {
        Ok(d) => selfform::start(&node, d, sf.clone()).await,
        Err(e) => Err(e),
    };
    match started {
        Ok(running) => {
            node.set_selfform(running);
            Ok(node)
        }
        // a member (it has Raft state) needs no store to resume: it
        // serves now and registers when the store is back
        Err(e) if selfform::store_unreachable(&e) && !node.raft().pristine().await? => {
            tracing::warn!(
                error = %e,
                "the discovery store is unreachable; this node is a member (it has Raft \
                 state), so it resumes without it and registers when the store is back"
            );
            selfform::register_later(&node, source, sf, &e);
            Ok(node)
        }
        Err(e) => {
            node.shutdown().await;
            Err(e)
        }
    }
}

/// Whether `host:port` names this host only (a loopback IP or `localhost`).
fn is_loopback(addr: &str) -> bool {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

pub(super) fn check_addr(addr: &str) -> std::result::Result<(), String> {
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(()),
        _ => Err(format!("`{addr}` is not a host:port address")),
    }
}

/// An API address as others will dial it: `host:port`, a real port, no
/// scheme or path (the members list shows it as is).
fn check_api_addr(addr: &str) -> std::result::Result<(), String> {
    let fix = "give it as host:port, e.g. \"10.0.0.5:8080\"";
    if addr.contains("://") {
        return Err(format!("`{addr}` has a scheme: {fix}, without `http://`"));
    }
    if addr.contains('/') || addr.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("`{addr}` is not a host:port address: {fix}"));
    }
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err(format!("`{addr}` has no port: {fix}"));
    };
    if host.is_empty() {
        return Err(format!("`{addr}` has no host: {fix}"));
    }
    // an IPv6 host is written in brackets: `[::1]:8080`
    if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
        return Err(format!(
            "`{addr}`: an IPv6 address goes in brackets, e.g. \"[::1]:8080\""
        ));
    }
    match port.parse::<u16>() {
        Ok(0) => Err(format!(
            "`{addr}` has port 0: advertise the port the server really listens on \
             (bind first, then pass its `local_addr()`)"
        )),
        Ok(_) => Ok(()),
        Err(_) => Err(format!("`{addr}`: `{port}` is not a port (1-65535): {fix}")),
    }
}

/// The secret is never printed: `Debug` shows whether one is set.
impl std::fmt::Debug for ClusterBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterBuilder")
            .field("node_id", &self.node_id)
            .field("listen", &self.listen)
            .field("listener", &self.listener)
            .field("advertise", &self.advertise)
            .field("api_addr", &self.api_addr)
            .field("peers", &self.peers)
            .field("join", &self.join)
            .field("data_dir", &self.data_dir)
            .field("heartbeat", &self.heartbeat)
            .field("election", &self.election)
            .field("snapshot_every", &self.snapshot_every)
            .field("quarantine", &self.quarantine)
            .field("keep_logs", &self.keep_logs)
            .field("log_reserve", &self.log_reserve)
            .field("request_timeout", &self.request_timeout)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls)
            .field("insecure_plaintext", &self.insecure_plaintext)
            .field("max_frame_bytes", &self.max_frame_bytes)
            .field("max_in_flight", &self.max_in_flight)
            .field("event_handler_timeout", &self.event_deadline)
            .field("slow_event_handler", &self.slow_event_handler)
            .field("ready_max_lag", &self.ready_max_lag)
            .field("discovery", &self.discovery)
            .field("cluster_name", &self.cluster_name)
            .field("bootstrap_expect", &self.bootstrap_expect)
            .field("voters", &self.voters)
            .field("remove_dead_after", &self.remove_dead_after)
            .field("remove_learners_after", &self.remove_learners_after)
            .field("discovery_timings", &self.discovery_timings)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn api_addrs_are_host_and_port_only() {
        for good in [
            "10.0.0.5:8080",
            "localhost:80",
            "[::1]:8080",
            "api.example.com:443",
        ] {
            assert_eq!(super::check_api_addr(good), Ok(()), "{good}");
        }
        for (bad, says) in [
            ("http://10.0.0.5:8080", "scheme"),
            ("10.0.0.5", "no port"),
            (":8080", "no host"),
            ("10.0.0.5:0", "port 0"),
            ("10.0.0.5:http", "not a port"),
            ("10.0.0.5:8080/admin", "not a host:port"),
            ("::1:8080", "brackets"),
            ("a b:80", "not a host:port"),
        ] {
            let e = super::check_api_addr(bad).expect_err(bad);
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn debug_output_never_shows_the_secret() {
        let b = crate::cluster().node_id(1).secret("hunter2-very-secret");
        let shown = format!("{b:?} {b:#?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
        let unset = format!("{:?}", crate::cluster());
        assert!(unset.contains("secret: None"), "{unset}");
    }

    /// The setting a builder's validation names, or `None` if it passes.
    fn refused(b: super::ClusterBuilder) -> Option<&'static str> {
        match b.validate() {
            Ok(_) => None,
            Err(crate::Error::Config { setting, .. }) => Some(setting),
            Err(e) => panic!("{e}"),
        }
    }

    /// The setting `plan()` (both modes) names, or `None` if it passes.
    fn refused_plan(b: super::ClusterBuilder) -> Option<&'static str> {
        match b.plan() {
            Ok(_) => None,
            Err(crate::Error::Config { setting, .. }) => Some(setting),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn a_discovery_setting_without_discovery_is_refused_not_ignored() {
        let base = || {
            crate::cluster()
                .node_id(1)
                .listen("127.0.0.1:7001")
                .data_dir("/nonexistent")
        };
        let s = Duration::from_secs(1);
        assert_eq!(refused_plan(base()), None);
        assert_eq!(refused_plan(base().voters(3)), None);
        for (b, setting) in [
            (base().cluster_name("shop"), "cluster_name"),
            (base().bootstrap_expect(3), "bootstrap_expect"),
            (base().remove_dead_after(s), "remove_dead_after"),
            (base().remove_learners_after(s), "remove_learners_after"),
            (base().discovery_timings(s, 3 * s), "discovery_timings"),
        ] {
            assert_eq!(refused_plan(b), Some(setting));
        }
        let e = base()
            .cluster_name("shop")
            .plan()
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains(".discovery("),
            "the error must say what to do: {e}"
        );
        // with discovery they apply
        let store = crate::discovery::MemoryStore::new();
        assert_eq!(
            refused_plan(
                base()
                    .discovery(store)
                    .cluster_name("shop")
                    .bootstrap_expect(3)
                    .remove_learners_after(s)
                    .discovery_timings(s, 3 * s)
            ),
            None
        );
    }

    #[test]
    fn listen_and_listener_together_are_refused() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let b = crate::cluster()
            .node_id(1)
            .listen("127.0.0.1:7001")
            .listener(l)
            .data_dir("/nonexistent");
        assert_eq!(refused_plan(b), Some("listener"));
    }

    #[test]
    fn a_node_other_hosts_can_reach_needs_tls_or_an_explicit_opt_out() {
        let base = |listen: &str| {
            crate::cluster()
                .node_id(1)
                .listen(listen)
                .data_dir("/nonexistent")
        };
        let tls = || crate::tls::DevCa::new().unwrap().tls_config(1).unwrap();
        // loopback: nothing needed
        assert_eq!(refused(base("127.0.0.1:7001")), None);
        assert_eq!(refused(base("[::1]:7001")), None);
        assert_eq!(
            refused(base("127.0.0.1:7001").advertise("localhost:7001")),
            None
        );
        // reachable: TLS, or insecure_plaintext with a secret of its own
        assert_eq!(refused(base("0.0.0.0:7001")), Some("tls"));
        assert_eq!(refused(base("10.0.0.1:7001")), Some("tls"));
        assert_eq!(
            refused(base("127.0.0.1:7001").advertise("node1.example:7001")),
            Some("tls")
        );
        assert_eq!(refused(base("10.0.0.1:7001").tls(tls())), None);
        assert_eq!(
            refused(base("10.0.0.1:7001").insecure_plaintext()),
            Some("secret")
        );
        assert_eq!(
            refused(base("10.0.0.1:7001").insecure_plaintext().secret("s")),
            None
        );
        assert_eq!(
            refused(base("10.0.0.1:7001").insecure_plaintext().tls(tls())),
            Some("insecure_plaintext")
        );
        let e = base("0.0.0.0:7001").validate().err().unwrap().to_string();
        assert!(
            e.contains("listens on 0.0.0.0:7001") && e.contains(".insecure_plaintext()"),
            "{e}"
        );
    }
}
