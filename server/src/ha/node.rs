//! The lease task of one node: compete for the lease, renew it every lease/4, step down on
//! its own before the lease can expire when renewals stop succeeding, give the lease up when
//! its key no longer allows it to lead or on shutdown, and keep a heartbeat in `kf_nodes`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::watch;
use tokio::time::{timeout, Instant};
use tokio_postgres::{Client, NoTls};

use super::lease::{self, Candidate, LeaseRow, NodeRow};
use super::{Fence, LeaderHooks, Role};

/// What this node last read of the cluster (for health, the 503 body and the web page).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ClusterView {
    /// The lease row.
    pub lease: LeaseRow,
    /// Every node's heartbeat.
    pub nodes: Vec<NodeRow>,
}

/// One node of an HA cluster: its fence, its role, and the lease task's controls.
#[derive(Debug)]
pub struct Cluster {
    me: Candidate,
    fence: Fence,
    /// The epoch whose in-memory views were reloaded: requests are served only under it.
    serving: AtomicU64,
    /// The epoch of this node's last grant (released on shutdown if still held).
    granted: AtomicU64,
    /// Local step-down deadline of the epoch held (the watchdog's input).
    deadline: watch::Sender<Option<(u64, Instant)>>,
    view: ArcSwap<ClusterView>,
    stop: watch::Sender<bool>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// How often a standby polls a free lease: a released lease is taken within this.
const STANDBY_POLL_MAX: Duration = Duration::from_millis(100);
/// How often a leader looks at its key between renewals.
const KEY_POLL: Duration = Duration::from_millis(50);
/// Heartbeat and cluster-view refresh period.
const BEAT_EVERY: Duration = Duration::from_secs(1);

impl Cluster {
    /// A node that is not leader yet; [`Cluster::start`] runs its lease task.
    pub fn new(me: Candidate) -> Arc<Self> {
        let fence = Fence::new(&me.node_id);
        Arc::new(Self {
            me,
            fence,
            serving: AtomicU64::new(0),
            granted: AtomicU64::new(0),
            deadline: watch::channel(None).0,
            view: ArcSwap::from_pointee(ClusterView::default()),
            stop: watch::channel(false).0,
            task: Mutex::new(None),
        })
    }

    /// Starts the lease task (and its step-down watchdog) against the database at `url`.
    pub fn start(self: &Arc<Self>, url: String, hooks: Arc<dyn LeaderHooks>) {
        tokio::spawn(Arc::clone(self).watchdog());
        let task = tokio::spawn(Arc::clone(self).run(url, hooks));
        *self.task.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
    }

    /// Stops competing: steps down at once, releases the lease if held (a standby takes
    /// over within its poll period) and ends the lease task.
    pub async fn shutdown(&self) {
        self.step_down_now();
        let _ = self.stop.send(true);
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = task {
            let _ = t.await;
        }
    }

    /// The fence the store checks.
    pub fn fence(&self) -> &Fence {
        &self.fence
    }

    /// This node's id, URL and lease length.
    pub fn candidate(&self) -> &Candidate {
        &self.me
    }

    /// Leader only once the lease is held and the views were reloaded under that epoch.
    pub fn role(&self) -> Role {
        let epoch = self.fence.epoch();
        if epoch != 0 && self.serving.load(Ordering::Acquire) == epoch {
            Role::Leader
        } else {
            Role::Standby
        }
    }

    /// The last cluster view read.
    pub fn view(&self) -> Arc<ClusterView> {
        self.view.load_full()
    }

    /// Where the leader is, as far as this node knows (its own URL when it leads).
    pub fn leader_url(&self) -> Option<String> {
        if self.role() == Role::Leader {
            return self.me.advertise_url.clone();
        }
        let view = self.view.load();
        view.lease.live.then(|| view.lease.advertise_url.clone()).flatten()
    }

    fn step_down_now(&self) {
        self.serving.store(0, Ordering::Release);
        self.fence.clear();
        self.deadline.send_replace(None);
    }

    fn step_down(&self, epoch: u64, why: &str) {
        if self.fence.revoke(epoch) {
            self.serving.store(0, Ordering::Release);
            tracing::warn!(node_id = %self.me.node_id, epoch, why, "stepped down: no longer leader");
        }
    }

    /// The lease of `epoch` was granted or renewed by a request sent at `sent`: it cannot
    /// expire before `sent + lease` (database time runs at the speed of ours), so writing
    /// stops at `sent + lease - lease/4`, before any other node can be granted the lease.
    fn extend(&self, epoch: u64, sent: Instant) {
        let lease = self.me.lease;
        self.deadline.send_replace(Some((epoch, sent + lease - lease / 4)));
    }

    async fn watchdog(self: Arc<Self>) {
        let mut rx = self.deadline.subscribe();
        let mut stop = self.stop.subscribe();
        loop {
            let due = *rx.borrow_and_update();
            let sleep = async {
                match due {
                    Some((_, at)) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = sleep => if let Some((epoch, _)) = due {
                    self.step_down(epoch, "lease not renewed before the local deadline");
                    self.deadline.send_if_modified(|d| {
                        let same = *d == due;
                        if same { *d = None; }
                        same
                    });
                },
                r = rx.changed() => if r.is_err() { return },
                _ = stop.changed() => return,
            }
        }
    }

    fn renew_every(&self) -> Duration {
        (self.me.lease / 4).max(Duration::from_millis(10))
    }

    fn poll_every(&self) -> Duration {
        (self.me.lease / 8).clamp(Duration::from_millis(10), STANDBY_POLL_MAX)
    }

    async fn run(self: Arc<Self>, url: String, hooks: Arc<dyn LeaderHooks>) {
        let mut stop = self.stop.subscribe();
        let mut db: Option<Client> = None;
        let mut next_beat = Instant::now();
        while !*stop.borrow() {
            if db.as_ref().is_none_or(Client::is_closed) {
                db = self.connect(&url).await;
            }
            if let Some(client) = &db {
                // A query that hangs (partition) must not hold the loop: the watchdog has
                // already stopped the writes; start over on a fresh connection.
                match timeout(
                    self.me.lease / 2 + self.me.lease / 8,
                    self.tick(client, hooks.as_ref(), &mut next_beat),
                )
                .await
                {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!(error = %e, "lease: database error"),
                    Err(_) => {
                        tracing::warn!("lease: database did not answer in time; reconnecting");
                        db = None;
                    }
                }
            }
            tokio::select! {
                () = self.pause(hooks.as_ref()) => {}
                _ = stop.changed() => {}
            }
        }
        self.finish(db).await;
    }

    /// Until the next tick: a standby's poll period; a leader's renewal period, cut short
    /// when its key stops allowing it to lead.
    async fn pause(&self, hooks: &dyn LeaderHooks) {
        if self.fence.epoch() == 0 {
            return tokio::time::sleep(self.poll_every()).await;
        }
        let until = Instant::now() + self.renew_every();
        while Instant::now() < until && hooks.still_may_lead() {
            tokio::time::sleep(KEY_POLL.min(until - Instant::now())).await;
        }
    }

    async fn connect(&self, url: &str) -> Option<Client> {
        match timeout(self.me.lease, tokio_postgres::connect(url, NoTls)).await {
            Ok(Ok((client, conn))) => {
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::warn!(error = %e, "lease: database connection closed");
                    }
                });
                let lease = self.me.lease;
                let ready = async {
                    lease::limit_waits(&client, lease / 4, lease / 2).await?;
                    lease::ensure_row(&client).await
                };
                match ready.await {
                    Ok(()) => Some(client),
                    Err(e) => {
                        tracing::warn!(error = %e, "lease: cannot create the lease row");
                        None
                    }
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "lease: cannot connect to the database");
                None
            }
            Err(_) => None,
        }
    }

    async fn tick(
        &self,
        db: &Client,
        hooks: &dyn LeaderHooks,
        next_beat: &mut Instant,
    ) -> Result<(), tokio_postgres::Error> {
        let key_ok = hooks.may_lead().await;
        let held = self.fence.epoch();
        if held != 0 {
            self.keep(db, hooks, held, key_ok).await?;
        } else if key_ok {
            self.compete(db, hooks).await?;
        }
        if Instant::now() >= *next_beat {
            *next_beat = Instant::now() + BEAT_EVERY;
            lease::heartbeat(db, &self.me, key_ok).await?;
            let nodes = lease::nodes(db).await?;
            let lease = lease::current(db).await?;
            self.view.store(Arc::new(ClusterView { lease, nodes }));
        } else if self.fence.epoch() == 0 {
            // A standby answers clients with the leader's URL: keep it fresh.
            let lease = lease::current(db).await?;
            let nodes = self.view.load().nodes.clone();
            self.view.store(Arc::new(ClusterView { lease, nodes }));
        }
        Ok(())
    }

    /// Leader: renew, or give the lease up when the key no longer allows leading.
    async fn keep(
        &self,
        db: &Client,
        hooks: &dyn LeaderHooks,
        epoch: u64,
        key_ok: bool,
    ) -> Result<(), tokio_postgres::Error> {
        if !key_ok {
            self.step_down(epoch, "the key in force no longer allows leading");
            lease::release(db, &self.me, epoch).await?;
            return Ok(());
        }
        let sent = Instant::now();
        if lease::renew(db, &self.me, epoch).await? {
            // The watchdog may have fired while the renewal was on its way: stay down then.
            if self.fence.epoch() == epoch {
                self.extend(epoch, sent);
            }
        } else {
            self.step_down(epoch, "the lease was lost");
            return Ok(());
        }
        if self.fence.epoch() == epoch && self.serving.load(Ordering::Acquire) != epoch {
            self.reload_then_serve(db, hooks, epoch).await?;
        }
        Ok(())
    }

    /// Standby with a valid key: take a free lease, reload every view, then serve.
    async fn compete(&self, db: &Client, hooks: &dyn LeaderHooks) -> Result<(), tokio_postgres::Error> {
        let sent = Instant::now();
        let Some(epoch) = lease::try_acquire(db, &self.me).await? else {
            return Ok(());
        };
        self.fence.grant(epoch);
        self.granted.store(epoch, Ordering::Release);
        self.extend(epoch, sent);
        tracing::info!(node_id = %self.me.node_id, epoch, "lease granted: reloading before serving");
        self.reload_then_serve(db, hooks, epoch).await
    }

    /// Reloads every view under `epoch`, then serves. Also run by `keep` for a grant whose
    /// reload did not finish (the tick timed out): a leader never stays unserving.
    async fn reload_then_serve(
        &self,
        db: &Client,
        hooks: &dyn LeaderHooks,
        epoch: u64,
    ) -> Result<(), tokio_postgres::Error> {
        match hooks.reload().await {
            Ok(()) if self.fence.epoch() == epoch => {
                self.serving.store(epoch, Ordering::Release);
                tracing::info!(node_id = %self.me.node_id, epoch, "leader");
            }
            Ok(()) => {}
            Err(e) => {
                tracing::error!(error = %e, "reloading the store's views failed: giving the lease up");
                self.step_down(epoch, "reload failed");
                lease::release(db, &self.me, epoch).await?;
            }
        }
        Ok(())
    }

    async fn finish(&self, db: Option<Client>) {
        self.step_down_now();
        let epoch = self.granted.load(Ordering::Acquire);
        let (Some(db), true) = (db, epoch != 0) else { return };
        // Only matches while this node still holds `epoch`: a lease lost meanwhile stays put.
        match timeout(Duration::from_secs(2), lease::release(&db, &self.me, epoch)).await {
            Ok(Ok(true)) => tracing::info!(node_id = %self.me.node_id, epoch, "lease released"),
            Ok(Ok(false)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "releasing the lease failed"),
            Err(_) => tracing::warn!("releasing the lease timed out"),
        }
    }
}
