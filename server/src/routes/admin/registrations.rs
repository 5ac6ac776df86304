//! Seats and feature slots: the paginated listing and the admin force-release.

use axum::extract::State;
use axum::response::Response;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{AdminRequest, RELEASE_ACTION};
use crate::auth::Caller;
use crate::clock::{now_micros, Micros};
use crate::error::{ApiError, ApiResult};
use crate::model::{AuditEvent, FeatureRegistration, Registration};
use crate::params::{Req, Required};
use crate::routes::Admin;
use crate::state::AppState;
use crate::store::{read, transact, ReadTx, RegCursor, SeatPage, SlotPage};

/// Most entries of one `/registrations` page (and the default).
pub const PAGE_MAX: u32 = 1000;

/// Where the next `/registrations` page starts (opaque to clients: base64url of JSON).
#[derive(Debug, Default, Serialize, Deserialize)]
struct PageCursor {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    seat: Option<(u64, String)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    slot: Option<(u64, String, String)>,
    #[serde(default)]
    seats_done: bool,
    #[serde(default)]
    slots_done: bool,
}

impl PageCursor {
    fn decode(s: &str) -> ApiResult<Self> {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(s.trim())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| ApiError::invalid("cursor", "not a cursor of this server"))
    }

    fn encode(&self) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(self).unwrap_or_default())
    }
}

#[derive(Debug, Serialize)]
struct SeatRow<'a> {
    license_id: u64,
    user: &'a str,
    registered_at: Micros,
    expires_at: Micros,
    borrowed_until: Option<Micros>,
    os_hostname: Option<&'a str>,
    ip_local: Option<&'a str>,
    user_info: Option<&'a str>,
}

#[derive(Debug, Serialize)]
struct SlotRow<'a> {
    license_id: u64,
    feature: &'a str,
    user: &'a str,
    registered_at: Micros,
    expires_at: Micros,
}

#[derive(Debug, Serialize)]
struct RegistrationsPage<'a> {
    registrations: Vec<SeatRow<'a>>,
    feature_registrations: Vec<SlotRow<'a>>,
    next_cursor: Option<String>,
}

/// `GET /api/v4/registrations`: live seats and feature slots (optionally `?license_id=`),
/// a page at a time: `?limit=` (≤ 1000, the default) and `?cursor=` (the previous page's
/// `next_cursor`; `null` there = nothing more). Keyset pages in (license, user) order, so
/// a listing of any size costs one page of memory.
pub async fn registrations_list(
    State(st): State<AppState>,
    _c: Caller,
    Req(r): Req<AdminRequest>,
) -> ApiResult<Response> {
    let license_id = r.license_id;
    let limit = r.limit.unwrap_or(PAGE_MAX).clamp(1, PAGE_MAX);
    let cursor = match r.cursor.filter(|c| !c.is_empty()) {
        Some(c) => PageCursor::decode(&c)?,
        None => PageCursor::default(),
    };
    let now = now_micros();
    let (regs, fregs, next) = read(st.store(), move |tx| read_page(tx, license_id, &cursor, limit)).await?;
    let page = RegistrationsPage {
        registrations: regs
            .iter()
            .filter(|r| r.is_active(now))
            .map(|r| SeatRow {
                license_id: r.license_id,
                user: &r.user,
                registered_at: Micros(r.registered_at),
                expires_at: Micros(r.expires_at),
                borrowed_until: r.borrowed_until.map(Micros),
                os_hostname: r.os_hostname.as_deref(),
                ip_local: r.ip_local.as_deref(),
                user_info: r.user_info.as_deref(),
            })
            .collect(),
        feature_registrations: fregs
            .iter()
            .filter(|r| r.expires_at > now)
            .map(|r| SlotRow {
                license_id: r.license_id,
                feature: &r.feature,
                user: &r.user,
                registered_at: Micros(r.registered_at),
                expires_at: Micros(r.expires_at),
            })
            .collect(),
        next_cursor: (!(next.seats_done && next.slots_done)).then(|| next.encode()),
    };
    // Written once into a buffer of about the right size (a seat is ≈ 250 bytes): growing
    // it by doubling left up to twice the page in the allocator after every listing.
    let rows = page.registrations.len() + page.feature_registrations.len();
    Ok(crate::routes::json_sized(&page, 256 * rows + 128))
}

/// One page of seats and of feature slots after `cursor`, and the cursor of the next page.
fn read_page(
    tx: &mut dyn ReadTx,
    license_id: Option<u64>,
    cursor: &PageCursor,
    limit: u32,
) -> ApiResult<(Vec<Registration>, Vec<FeatureRegistration>, PageCursor)> {
    let seat_after = cursor.seat.as_ref().map(|(l, u)| RegCursor {
        license_id: *l,
        feature: String::new(),
        user: u.clone(),
    });
    let slot_after = cursor.slot.as_ref().map(|(l, f, u)| RegCursor {
        license_id: *l,
        feature: f.clone(),
        user: u.clone(),
    });
    let regs = if cursor.seats_done {
        Vec::new()
    } else {
        tx.registrations_page(SeatPage {
            license_id,
            after: seat_after.as_ref(),
            limit,
        })?
    };
    let fregs = if cursor.slots_done {
        Vec::new()
    } else {
        tx.feature_registrations_page(SlotPage {
            license_id,
            feature: None,
            after: slot_after.as_ref(),
            limit,
        })?
    };
    let next = PageCursor {
        seats_done: regs.len() < limit as usize,
        slots_done: fregs.len() < limit as usize,
        seat: regs.last().map(|r| (r.license_id, r.user.clone())),
        slot: fregs.last().map(|r| (r.license_id, r.feature.clone(), r.user.clone())),
    };
    Ok((regs, fregs, next))
}

/// `POST /api/v4/registrations/release` (admin): force-release one user's seat (and its
/// feature slots). Key-bound licenses pass the key gate like any action.
pub async fn registrations_release(
    State(st): State<AppState>,
    Admin(caller): Admin,
    Req(r): Req<AdminRequest>,
) -> ApiResult<Json<Value>> {
    let user = r.user.required("user")?;
    let license_id = r.license_id;
    let id = match (r.product, license_id) {
        (Some(product), id) => st.gate(&product, id, RELEASE_ACTION)?,
        (None, Some(id)) => st.gate_id(id, RELEASE_ACTION)?,
        (None, None) => return Err(ApiError::missing("license_id")),
    };
    let actor = caller.username.clone();
    let check = st.commit_check(id, RELEASE_ACTION);
    let released = transact(st.store(), move |tx| -> ApiResult<_> {
        let released = tx.delete_registration(id, &user)?;
        if released {
            tx.audit(&AuditEvent::new(
                "registration_released",
                Some(&actor),
                Some(id),
                format!("user {user} released by an admin"),
            ))?;
        }
        check.verify()?;
        Ok(released)
    })
    .await?;
    Ok(Json(json!({ "status": "ok", "released": released, "license_id": id })))
}
