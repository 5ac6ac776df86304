//! `keyfloat demo`: everything a newcomer needs in one command.
//!
//! A fresh data directory gets a throwaway *demo* vendor key (generated now, never shipped,
//! 0600), an admin account, a simulated key provisioned by that vendor key, a key-bound
//! `hwbased` license (consumptions, a consumption feature, a floating feature) and a plain
//! license. Then `keyfloat serve --key-backend sim --user-authentication` runs on the same
//! code path, and the banner prints the credentials and the seed page's flow as `curl`
//! lines. The page at `/` shows "Pull key" / "Plug key" (sim backend only).

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use keyfloat_hal::trust::VendorSigningKey;
use keyfloat_server::auth::hash_password;
use keyfloat_server::clock::now_micros;
use keyfloat_server::model::{
    Account, AuditEvent, Auth, ConsumptionTerms, FeatureKind, FeatureTerms, License, LicenseSource, LicenseTerms, Role,
};
use keyfloat_server::store::transact_blocking;
use keyfloat_server::{KeyBackend, ServerConfig, SqliteStore, Store};

/// Product code of the key-bound demo license (as on the seed page).
pub const HW_PRODUCT: &str = "hwbased";
/// Product code of the plain demo license.
pub const PLAIN_PRODUCT: &str = "plain";
/// File name of the demo vendor signing key inside the data directory.
pub const VENDOR_KEY_FILE: &str = "demo-vendor-key.pem";

/// Arguments of `keyfloat demo`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Listen address; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
    /// Data directory (must be empty or absent) [default: a new temporary directory].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Admin login of the demo.
    #[arg(long, default_value = "admin")]
    admin_user: String,
    /// Admin password of the demo.
    #[arg(long, default_value = "demo-admin")]
    admin_password: String,
    /// Serial number of the simulated key.
    #[arg(long, default_value_t = 12345678)]
    serial: u32,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let data_dir = match &args.data_dir {
        Some(d) => d.clone(),
        None => fresh_temp_dir()?,
    };
    prepare_data_dir(&data_dir)?;
    let vendor_key = data_dir.join(VENDOR_KEY_FILE);
    VendorSigningKey::generate()
        .write_pem_file(&vendor_key)
        .with_context(|| format!("writing {}", vendor_key.display()))?;
    let db = data_dir.join("db");
    seed_store(&db, &args)?;

    let listen = resolve_listen(&args.listen)?;
    let config = ServerConfig {
        listen: listen.to_string(),
        port: None,
        data_dir: db,
        key_backend: KeyBackend::Sim,
        user_authentication: true,
        crash_if_no_hardware_key: false,
        vendor_public_key: None,
        sim_vendor_key: Some(vendor_key.clone()),
        ..ServerConfig::default()
    };
    print!("{}", banner(listen, &args, &data_dir, &vendor_key));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(super::serve::serve(config, args.serial))
}

/// A new directory under the system temp dir (kept after exit so the data can be looked at).
fn fresh_temp_dir() -> anyhow::Result<PathBuf> {
    let stamp = now_micros();
    let dir = std::env::temp_dir().join(format!("keyfloat-demo-{}-{stamp}", std::process::id()));
    Ok(dir)
}

/// The demo only ever starts from scratch: refuses a directory that already has data.
fn prepare_data_dir(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
        bail!(
            "--data-dir {} is not empty; the demo starts from a fresh directory",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Port 0 is resolved here so the printed `curl` lines carry the real address.
fn resolve_listen(listen: &str) -> anyhow::Result<SocketAddr> {
    let addr: SocketAddr = listen
        .parse()
        .with_context(|| format!("--listen {listen:?} (expected HOST:PORT)"))?;
    if addr.port() != 0 {
        return Ok(addr);
    }
    let probe = TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
    Ok(probe.local_addr()?)
}

/// The demo's licenses: `hwbased` bound to the simulated key, and a plain one.
pub fn demo_licenses(serial: u32, machine_hw_id: &str) -> Vec<License> {
    let now = now_micros();
    // Ids are given by the store when the licenses are inserted.
    vec![
        // Activated with the key: its serial is the hardware ID while it is plugged in.
        License::new(0, hwbased_terms(), serial.to_string(), LicenseSource::Api, now),
        License::new(0, plain_terms(), machine_hw_id.to_owned(), LicenseSource::Api, now + 1),
    ]
}

/// Key-bound consumption license with a consumption feature and a floating feature.
fn hwbased_terms() -> LicenseTerms {
    let feature =
        |code: &str, name: &str, kind: FeatureKind, floating_users: u32, max_consumption: Option<i64>| FeatureTerms {
            code: code.into(),
            name: Some(name.into()),
            kind,
            floating_users: Some(floating_users),
            floating_timeout_minutes: None,
            max_consumption,
            allow_overages: false,
            max_overages: 0,
        };
    LicenseTerms {
        product_name: Some("Hardware-key demo product".into()),
        license_type: "consumption".into(),
        floating_users: 5,
        floating_timeout_minutes: 30,
        max_borrow_time_hours: 24,
        consumption: Some(ConsumptionTerms {
            max_consumptions: 100,
            allow_unlimited: false,
            allow_overages: false,
            max_overages: 0,
            allow_negative: false,
            allow_negative_total: false,
            reset_period: None,
        }),
        features: vec![
            feature(
                "consFeature2",
                "Consumption feature",
                FeatureKind::Consumption,
                3,
                Some(10),
            ),
            feature("floatFeature", "Floating feature", FeatureKind::Activation, 2, None),
        ],
        hardware_key_required: true,
        ..LicenseTerms::new(HW_PRODUCT, key_auth("DEMO-HWKEY-0001"))
    }
}

/// Perpetual license without a hardware key.
fn plain_terms() -> LicenseTerms {
    LicenseTerms {
        product_name: Some("Plain demo product".into()),
        floating_users: 3,
        floating_timeout_minutes: 30,
        max_borrow_time_hours: 24,
        ..LicenseTerms::new(PLAIN_PRODUCT, key_auth("DEMO-PLAIN-0001"))
    }
}

fn key_auth(license_key: &str) -> Auth {
    Auth::Key {
        license_key: license_key.into(),
    }
}

/// Admin account and the two licenses, committed before the server starts.
fn seed_store(db: &Path, args: &Args) -> anyhow::Result<()> {
    if args.admin_user.trim().is_empty() || args.admin_user.contains(':') || args.admin_password.is_empty() {
        bail!("--admin-user must be non-empty without ':' and --admin-password non-empty");
    }
    let hash = hash_password(&args.admin_password).map_err(|e| anyhow::anyhow!("{e}"))?;
    let machine = keyfloat_hal::machine_hardware_id().context("reading the machine id")?;
    let licenses = demo_licenses(args.serial, machine.as_str());
    let store = SqliteStore::open(db).with_context(|| format!("opening {}", db.display()))?;
    let admin = args.admin_user.clone();
    transact_blocking(&store, move |tx| {
        tx.put_account(&Account {
            username: admin.clone(),
            password_hash: hash,
            role: Role::Admin,
        })?;
        tx.audit(&AuditEvent::new(
            "user_added",
            Some("demo"),
            None,
            format!("{admin} (admin)"),
        ))?;
        for mut l in licenses {
            l.id = tx.next_license_id()?;
            tx.insert_license(&l)?;
            tx.audit(&AuditEvent::new(
                "license_added",
                Some("demo"),
                Some(l.id),
                l.added_audit_detail("demo"),
            ))?;
        }
        Ok(())
    })
    .map_err(|e: keyfloat_server::store::StoreError| anyhow::anyhow!("seeding the demo store: {e}"))?;
    store.flush().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

/// The seed page's flow as `curl` lines. Tests parse these lines and run them, so keep one
/// request per `curl` line, the URL last in double quotes, the JSON body in `-d '…'`.
pub fn seed_flow(user: &str, password: &str) -> Vec<(&'static str, String)> {
    let auth = "-H \"Authorization: Bearer $TOKEN\"";
    let json = "-H 'Content-Type: application/json'";
    vec![
        (
            "Log in as admin (authentication mode)",
            format!("TOKEN=$(curl -s -u '{user}:{password}' \"$KF/auth\" | sed -E 's/.*\"token\":\"([^\"]+)\".*/\\1/')"),
        ),
        (
            "Add consumptions",
            format!("curl -s {auth} {json} -d '{{\"product\":\"hwbased\",\"consumptions\":2}}' \"$KF/api/v4/add_consumption\""),
        ),
        (
            "Add feature consumptions",
            format!("curl -s {auth} {json} -d '{{\"product\":\"hwbased\",\"feature\":\"consFeature2\",\"consumptions\":1}}' \"$KF/api/v4/add_feature_consumption\""),
        ),
        (
            "Register user",
            format!("curl -s {auth} {json} -d '{{\"product\":\"hwbased\",\"user\":\"user2\"}}' \"$KF/api/v4/register\""),
        ),
        (
            "Register user to feature",
            format!("curl -s {auth} {json} -d '{{\"product\":\"hwbased\",\"feature\":\"consFeature2\",\"user\":\"user2\",\"os_hostname\":\"\",\"ip_local\":\"0.1.1.1\",\"user_info\":\"\"}}' \"$KF/api/v4/featureRegister\""),
        ),
        (
            "Unplug the (simulated) hardware key — or use \"Pull key\" on the page",
            format!("curl -s -X POST {auth} \"$KF/api/v4/sim/unplug\""),
        ),
        (
            "Add a feature consumption => hardware_key_not_accessible",
            format!("curl -s {auth} {json} -d '{{\"product\":\"hwbased\",\"feature\":\"consFeature2\",\"consumptions\":1}}' \"$KF/api/v4/add_feature_consumption\""),
        ),
        (
            "The plain license keeps working",
            format!("curl -s {auth} {json} -d '{{\"product\":\"plain\",\"user\":\"user3\"}}' \"$KF/api/v4/register\""),
        ),
        (
            "Plug the key back in: service resumes",
            format!("curl -s -X POST {auth} \"$KF/api/v4/sim/plug\""),
        ),
    ]
}

fn banner(addr: SocketAddr, args: &Args, data_dir: &Path, vendor_key: &Path) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "keyfloat demo — SIMULATED hardware key, demo vendor key (never use in production)"
    );
    let _ = writeln!(s, "  page:        http://{addr}/");
    let _ = writeln!(s, "  admin login: {} / {}", args.admin_user, args.admin_password);
    let _ = writeln!(s, "  data dir:    {}", data_dir.display());
    let _ = writeln!(s, "  vendor key:  {} (generated now, 0600)", vendor_key.display());
    let _ = writeln!(
        s,
        "  key:         simulated YubiKey serial {} (plugged in; \"Pull key\" / \"Plug key\" on the page)",
        args.serial
    );
    let _ = writeln!(
        s,
        "  licenses:    {HW_PRODUCT} (key-bound: consumptions, consFeature2, floatFeature) and {PLAIN_PRODUCT}"
    );
    let _ = writeln!(
        s,
        "  metrics:     http://{addr}/metrics (with the login token: -H \"Authorization: Bearer $TOKEN\")"
    );
    let _ = writeln!(s);
    let _ = writeln!(s, "The seed flow (paste into a shell):");
    let _ = writeln!(s, "export KF=http://{addr}");
    for (what, line) in seed_flow(&args.admin_user, &args.admin_password) {
        let _ = writeln!(s, "# {what}");
        let _ = writeln!(s, "{line}");
    }
    let _ = writeln!(s);
    s
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn licenses_follow_the_seed_page() {
        let l = demo_licenses(42, "machine");
        assert_eq!(l[0].terms.product, "hwbased");
        assert!(l[0].terms.hardware_key_required);
        assert_eq!(l[0].activation_hardware_id, "42");
        assert!(l[0].terms.feature("consFeature2").is_some());
        assert!(l[0].terms.features.iter().any(|f| f.floating_users.is_some()));
        assert!(!l[1].terms.hardware_key_required);
        assert_eq!(l[1].activation_hardware_id, "machine");
    }

    #[test]
    fn seed_flow_lines_are_one_request_each() {
        for (_, line) in seed_flow("admin", "pw") {
            assert_eq!(line.matches("curl ").count(), 1, "{line}");
            assert!(line.contains("\"$KF/"), "{line}");
        }
    }

    #[test]
    fn port_zero_is_resolved_and_bad_listen_refused() {
        assert_ne!(resolve_listen("127.0.0.1:0").unwrap().port(), 0);
        assert!(resolve_listen("nonsense").is_err());
    }
}
