//! `keyfloat serve`: the floating-license server.
//!
//! Exit codes: 0 after a graceful shutdown (SIGTERM/SIGINT; licenses are never deactivated),
//! 2 on a start-up error, 3 ([`keyfloat_server::EXIT_NO_HARDWARE_KEY`]) when
//! `crashIfNoHardwareKey` stops the server because a key-bound license was used without
//! its valid key.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use keyfloat_hal::{HardwareIdCell, MonitorConfig};
use keyfloat_server::{AppState, KeyBackend, KeyPolicy, ServerConfig, StateParts, Store};

mod keys;

use keys::{key_trust, key_validator};

/// Name of the simulated key created by `--key-backend sim`.
pub const SIM_KEY_NAME: &str = "sim-key";

/// Arguments of `keyfloat serve`. Flags override the `--config` file.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// YAML configuration file (keys: listen, port, data_dir, store, key_backend, userAuthentication,
    /// crashIfNoHardwareKey, vendor_public_key, revalidate_secs, sim_vendor_key, key_grace_secs).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Listen address [default: 127.0.0.1:8080]; port 0 picks a free port. The bound address
    /// is printed on stdout as `listening on http://ADDR`.
    #[arg(long)]
    pub listen: Option<String>,
    /// Port only (keeps the host of --listen).
    #[arg(long)]
    pub port: Option<u16>,
    /// Data directory: database and JWT secret [default: keyfloat-data].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Shared store: `postgres://user[:password]@host[:port]/db` [default: the SQLite file
    /// in the data dir, one server per data dir].
    #[arg(long, value_name = "URL")]
    pub store: Option<String>,
    /// HA: --node-id, --advertise-url, --lease-secs.
    #[command(flatten)]
    pub ha: super::ha::HaArgs,
    /// Key backends to watch [default: auto].
    #[arg(long, value_parser = super::common::key_backend_parser())]
    pub key_backend: Option<KeyBackend>,
    /// Authentication mode: JWT logins, admin/user roles (`--user-authentication [true|false]`).
    #[arg(long, alias = "userAuthentication", num_args = 0..=1, default_missing_value = "true")]
    pub user_authentication: Option<bool>,
    /// Exit with status 3 instead of answering hardware_key_not_accessible.
    #[arg(long, alias = "crashIfNoHardwareKey", num_args = 0..=1, default_missing_value = "true")]
    pub crash_if_no_hardware_key: Option<bool>,
    /// Vendor public key (PEM file path or inline PEM): validates keys and license files.
    #[arg(long)]
    pub vendor_public_key: Option<String>,
    /// Re-prove the key in force this often (seconds) [default: 60].
    #[arg(long)]
    pub revalidate_secs: Option<u64>,
    /// DEMO/CI ONLY, with --key-backend sim: vendor signing key (PEM) that provisions the
    /// simulated key; the server then trusts that vendor.
    #[arg(long)]
    pub sim_vendor_key: Option<PathBuf>,
    /// Accept serial-only keys (generic HID dongles: presence, not proof) for key-bound licenses.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub allow_serial_only_keys: Option<bool>,
    /// Grace period (seconds) when the key in force disappears or becomes unreadable (USB
    /// reset, hub glitch): key-bound licenses keep working meanwhile [default: 0 = none].
    #[arg(long, alias = "keyGraceSecs")]
    pub key_grace_secs: Option<u64>,
    /// Demand a fresh PIV attestation of slot 9E at every key (re)validation.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub require_attestation: Option<bool>,
    /// Trusted attestation root (PEM file or inline PEM; repeatable; replaces the file's list).
    #[arg(long, value_name = "PATH|PEM")]
    pub attestation_root: Vec<String>,
    /// Lifetime of login tokens in seconds [default: ten years; revoke with `keyfloat user revoke`].
    #[arg(long)]
    pub token_lifetime_secs: Option<u64>,
    /// Password-hashing threads [default: the number of cores].
    #[arg(long)]
    pub hash_workers: Option<usize>,
    /// Authentication mode: serve /metrics without a token.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub metrics_public: Option<bool>,
    /// A dedicated bearer token for /metrics.
    #[arg(long, env = "KEYFLOAT_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,
    /// A separate address serving only /metrics, unauthenticated (bind it privately).
    #[arg(long)]
    pub metrics_listen: Option<String>,
    /// Per-license metric series (`--metrics-license-labels false` leaves them out).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub metrics_license_labels: Option<bool>,
    /// Seconds a client has for the TLS handshake and each request's headers [default: 10].
    #[arg(long)]
    pub header_timeout_secs: Option<u64>,
    /// Seconds a client has for a request body [default: 30].
    #[arg(long)]
    pub body_timeout_secs: Option<u64>,
    /// Seconds a read or write may stall [default: 60].
    #[arg(long)]
    pub idle_timeout_secs: Option<u64>,
    /// Connections served at once [default: 16384].
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// Seconds SIGTERM waits for requests in flight [default: 10].
    #[arg(long)]
    pub drain_secs: Option<u64>,
    /// TLS certificate chain (PEM); with --tls-key the server speaks HTTPS only.
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long)]
    pub tls_key: Option<PathBuf>,
    /// CA certificates (PEM) client certificates must chain to (mutual TLS).
    #[arg(long)]
    pub tls_client_ca: Option<PathBuf>,
    /// With TLS: also serve plain HTTP on this address.
    #[arg(long)]
    pub http_listen: Option<String>,
    /// Serial of the simulated key.
    #[arg(long, default_value_t = 12345678)]
    pub sim_serial: u32,
}

/// The file configuration with the flags applied.
pub fn effective_config(args: &Args) -> anyhow::Result<ServerConfig> {
    let mut c = match &args.config {
        Some(path) => ServerConfig::load(path)?,
        None => ServerConfig::default(),
    };
    if let Some(v) = &args.listen {
        c.listen = v.clone();
        c.port = None;
    }
    if let Some(v) = args.port {
        c.port = Some(v);
    }
    if let Some(v) = &args.store {
        c.store = Some(keyfloat_server::store::open::StoreUrl(v.clone()));
    }
    if !args.attestation_root.is_empty() {
        c.attestation_roots = args.attestation_root.clone();
    }
    // The flags named like the configuration keys they override.
    macro_rules! set {
        ($($f:ident),*) => {$(
            if let Some(v) = &args.$f {
                c.$f = v.clone();
            }
        )*};
    }
    macro_rules! set_opt {
        ($($f:ident),*) => {$(
            if let Some(v) = &args.$f {
                c.$f = Some(v.clone());
            }
        )*};
    }
    super::ha::apply(&args.ha, &mut c);
    set!(
        data_dir,
        key_backend,
        user_authentication,
        crash_if_no_hardware_key,
        revalidate_secs,
        allow_serial_only_keys,
        key_grace_secs,
        require_attestation,
        token_lifetime_secs,
        metrics_public,
        metrics_license_labels,
        header_timeout_secs,
        body_timeout_secs,
        idle_timeout_secs,
        max_connections,
        drain_secs
    );
    set_opt!(
        vendor_public_key,
        sim_vendor_key,
        hash_workers,
        metrics_token,
        metrics_listen,
        tls_cert,
        tls_key,
        tls_client_ca,
        http_listen
    );
    Ok(c)
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = effective_config(&args)?;
    let sim_serial = args.sim_serial;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let out = rt.block_on(serve(config, sim_serial));
    // Connections still open after the drain are abandoned, not waited for.
    rt.shutdown_timeout(Duration::from_secs(1));
    out
}

/// Connection limits and timeouts of `config`.
pub fn serve_options(config: &ServerConfig) -> keyfloat_server::listen::ServeOptions {
    let secs = |s: u64| Duration::from_secs(s.max(1));
    let mut max_connections = config.max_connections.max(1);
    // Descriptors for the store, the keys and the log; beyond the limit accept() fails.
    if let Some(limit) = keyfloat_server::listen::open_files_limit() {
        let usable = limit.saturating_sub(64).max(1);
        if max_connections > usable {
            tracing::warn!(
                max_connections,
                open_files_limit = limit,
                "max_connections above the open-files limit; using {usable} (raise `ulimit -n`)"
            );
            max_connections = usable;
        }
    }
    keyfloat_server::listen::ServeOptions {
        header_timeout: secs(config.header_timeout_secs),
        body_timeout: secs(config.body_timeout_secs),
        idle_timeout: secs(config.idle_timeout_secs),
        max_connections,
        drain: Duration::from_secs(config.drain_secs),
    }
}

/// Security settings of `config`.
pub fn security(config: &ServerConfig) -> keyfloat_server::Security {
    let mut s = keyfloat_server::Security::default();
    if let Some(n) = config.hash_workers {
        s.hash_workers = n.clamp(1, keyfloat_server::hashing::default_workers());
    }
    s.metrics = keyfloat_server::MetricsAccess {
        public: config.metrics_public,
        token: config.metrics_token.clone().filter(|t| !t.is_empty()),
        hide_license_labels: !config.metrics_license_labels,
    };
    s
}

/// The server loop (also used by `keyfloat demo`): store, key monitor, app, until SIGTERM.
pub async fn serve(config: ServerConfig, sim_serial: u32) -> anyhow::Result<ExitCode> {
    let data_dir = config.data_dir.clone();
    let spec = config.store_spec().map_err(|e| anyhow::anyhow!("{e}"))?;
    let cluster = super::ha::cluster(&config, &spec)?;
    let fence = cluster.as_ref().map(|c| c.fence().clone());
    let store =
        keyfloat_server::store::open(&spec, fence).map_err(|e| anyhow::anyhow!("opening the store {spec}: {e}"))?;
    let tokens = super::ha::token_keys(&config, &spec, cluster.is_some())
        .await?
        .with_lifetime(config.token_lifetime_secs);

    let trust = key_trust(&config, sim_serial)?;
    let providers = super::common::providers(config.key_backend, trust.sim.as_ref().map(|s| &s.bus))?;
    let validator = key_validator(&config, trust.vendor, &trust.attestation_roots)?;
    let machine_id = keyfloat_hal::machine_hardware_id().context("reading the machine id")?;
    let cell = HardwareIdCell::new(machine_id);
    let reader = cell.reader();
    let monitor = keyfloat_hal::spawn_monitor(cell, providers, validator, monitor_config(&config))
        .context("starting the key monitor")?;

    let state = AppState::with_security(
        StateParts {
            store: Arc::clone(&store) as Arc<dyn Store>,
            keys: reader.clone(),
            tokens,
            user_authentication: config.user_authentication,
            key_policy: key_policy(&config, &store),
            sim: trust.sim.map(|s| Arc::new(s) as Arc<dyn keyfloat_server::KeyControl>),
            backend: config.key_backend.as_str().into(),
            vendor_key: trust.vendor,
        },
        security(&config),
    )
    .await
    .map_err(|e| anyhow::anyhow!("loading licenses: {e}"))?;

    if let Some(c) = cluster {
        super::ha::join(c, &spec, &state);
    }
    // Key events: one log line, one audit row and one metric each.
    tokio::spawn(keyfloat_server::metrics::watch_keys(state.clone()));
    // Account changes made by `keyfloat user` while the server runs.
    tokio::spawn(keyfloat_server::auth::watch_accounts(state.clone()));
    for warning in keyfloat_server::files::permission_warnings(&data_dir) {
        tracing::warn!("{warning}");
    }

    let addr = config.listen_addr();
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    tracing::info!(
        local = %listener.local_addr()?,
        auth = config.user_authentication,
        crash_if_no_hardware_key = config.crash_if_no_hardware_key,
        key_grace_secs = config.key_grace_secs,
        data_dir = %data_dir.display(),
        store = %spec,
        "keyfloat server started"
    );
    spawn_metrics_listener(&config, &state).await?;
    serve_until_shutdown(&config, listener, state).await?;
    tracing::info!("shutting down: flushing the store (licenses stay activated)");
    store.flush().map_err(|e| anyhow::anyhow!("{e}"))?;
    monitor.stop();
    Ok(ExitCode::SUCCESS)
}

fn monitor_config(config: &ServerConfig) -> MonitorConfig {
    MonitorConfig {
        revalidate_every: Duration::from_secs(config.revalidate_secs.max(1)),
        grace: Duration::from_secs(config.key_grace_secs),
        ..MonitorConfig::default()
    }
}

/// `crashIfNoHardwareKey`: flush the store and exit with status 3; otherwise refuse the call.
fn key_policy(config: &ServerConfig, store: &Arc<dyn Store>) -> KeyPolicy {
    if !config.crash_if_no_hardware_key {
        return KeyPolicy::Refuse;
    }
    let store = Arc::clone(store);
    KeyPolicy::Crash(Arc::new(move |reason: &str| {
        tracing::error!(reason, "crashIfNoHardwareKey: stopping the server (exit status 3)");
        if let Err(e) = store.flush() {
            tracing::error!(error = %e, "flushing the store failed");
        }
        std::process::exit(i32::from(keyfloat_server::EXIT_NO_HARDWARE_KEY));
    }))
}

/// `metrics_listen`: /metrics alone on its own address, served until the process ends.
async fn spawn_metrics_listener(config: &ServerConfig, state: &AppState) -> anyhow::Result<()> {
    let Some(m) = &config.metrics_listen else {
        return Ok(());
    };
    let ml = tokio::net::TcpListener::bind(m)
        .await
        .with_context(|| format!("binding metrics_listen {m}"))?;
    println!("metrics on http://{}", ml.local_addr()?);
    tokio::spawn(keyfloat_server::listen::serve_with(
        ml,
        keyfloat_server::app::metrics_app(state.clone()),
        serve_options(config),
        Arc::new(keyfloat_server::listen::PlainTcp),
        std::future::pending(),
    ));
    Ok(())
}

/// Serves the app on `listener` (HTTPS when TLS is configured, plus plain HTTP on
/// `http_listen`) until SIGTERM/SIGINT, then drains the connections in flight.
async fn serve_until_shutdown(
    config: &ServerConfig,
    listener: tokio::net::TcpListener,
    state: AppState,
) -> anyhow::Result<()> {
    let opts = serve_options(config);
    let cluster = state.cluster().cloned();
    let router = keyfloat_server::app(state);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let mut servers = tokio::task::JoinSet::new();
    let shutdown = shutdown_signal();
    let tls = tls_acceptor(config)?;
    let main: Arc<dyn keyfloat_server::listen::Accept> = match &tls {
        Some(t) => Arc::clone(t) as _,
        None => Arc::new(keyfloat_server::listen::PlainTcp),
    };
    // With TLS, plain HTTP only on an address asked for.
    if let (Some(_), Some(h)) = (&tls, &config.http_listen) {
        let hl = tokio::net::TcpListener::bind(h)
            .await
            .with_context(|| format!("binding http_listen {h}"))?;
        println!("listening on http://{}", hl.local_addr()?);
        servers.spawn(keyfloat_server::listen::serve_with(
            hl,
            router.clone(),
            opts,
            Arc::new(keyfloat_server::listen::PlainTcp),
            wait(stopped.clone()),
        ));
    }
    println!("listening on {}://{}", main.scheme(), listener.local_addr()?);
    servers.spawn(keyfloat_server::listen::serve_with(
        listener,
        router,
        opts,
        main,
        wait(stopped.clone()),
    ));
    if let Some(t) = tls {
        tokio::spawn(reload_on_sighup(t));
    }
    shutdown.await;
    // HA: stop writing and hand the lease over first, so a standby serves within its poll.
    if let Some(c) = &cluster {
        c.shutdown().await;
    }
    tracing::info!(drain_secs = opts.drain.as_secs(), "stopping: draining connections");
    let _ = stop.send(true);
    while let Some(r) = servers.join_next().await {
        r.context("server task")?.context("serving")?;
    }
    Ok(())
}

fn tls_acceptor(config: &ServerConfig) -> anyhow::Result<Option<Arc<keyfloat_server::tls::TlsAcceptor>>> {
    match (&config.tls_cert, &config.tls_key) {
        (None, None) => {
            if config.tls_client_ca.is_some() {
                anyhow::bail!("tls_client_ca needs tls_cert and tls_key");
            }
            Ok(None)
        }
        (Some(cert), Some(key)) => {
            let files = keyfloat_server::tls::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: config.tls_client_ca.clone(),
            };
            Ok(Some(Arc::new(
                keyfloat_server::tls::TlsAcceptor::new(files).context("loading the TLS certificate and key")?,
            )))
        }
        _ => anyhow::bail!("tls_cert and tls_key go together"),
    }
}

/// SIGHUP: re-read the certificate and key. New handshakes use them; open connections
/// keep theirs. A bad file is logged and the configuration in force stays.
async fn reload_on_sighup(tls: Arc<keyfloat_server::tls::TlsAcceptor>) {
    #[cfg(unix)]
    {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
            return;
        };
        while hup.recv().await.is_some() {
            match tls.reload() {
                Ok(()) => tracing::info!("SIGHUP: TLS certificate and key reloaded"),
                Err(e) => tracing::error!(error = %e, "SIGHUP: TLS reload failed; keeping the previous certificate"),
            }
        }
    }
    #[cfg(not(unix))]
    drop(tls);
}

/// Registers for SIGINT and SIGTERM at once, and resolves on the first of them. Called
/// before `listening on` is printed: a supervisor (or a test) that sends SIGTERM as soon as
/// it reads that line must get a graceful stop, not the signal's default action.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let interrupt = signal(SignalKind::interrupt()).ok();
        let terminate = signal(SignalKind::terminate()).ok();
        async move {
            let wait = |s: Option<tokio::signal::unix::Signal>| async move {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = wait(interrupt) => {},
                () = wait(terminate) => {},
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn parse(argv: &[&str]) -> ServerConfig {
        let cli = Cli::try_parse_from(std::iter::once("serve").chain(argv.iter().copied())).unwrap();
        effective_config(&cli.args).unwrap()
    }

    #[test]
    fn flags_override_the_yaml_file_and_camel_case_keys_work() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(
            &path,
            "listen: 0.0.0.0:9000\nuserAuthentication: true\ncrashIfNoHardwareKey: true\nkey_backend: sim\n",
        )
        .unwrap();
        let p = path.to_str().unwrap();
        let c = parse(&["--config", p]);
        assert!(c.user_authentication && c.crash_if_no_hardware_key);
        assert_eq!(c.listen_addr(), "0.0.0.0:9000");
        assert_eq!(c.key_backend, KeyBackend::Sim);
        let c = parse(&[
            "--config",
            p,
            "--user-authentication",
            "false",
            "--port",
            "9100",
            "--key-backend",
            "pcsc",
        ]);
        assert!(!c.user_authentication && c.crash_if_no_hardware_key);
        assert_eq!(c.listen_addr(), "0.0.0.0:9100");
        assert_eq!(c.key_backend, KeyBackend::Pcsc);
        let c = parse(&["--crash-if-no-hardware-key", "--user-authentication"]);
        assert!(c.crash_if_no_hardware_key && c.user_authentication);
        assert_eq!(c.listen_addr(), "127.0.0.1:8080");
    }
}
