"""Drives a running keyfloat server with the official `licensespring` Python SDK (4.0.0).

Usage: fs_flow.py HOST:PORT PHASE
  PHASE = plugged : every FloatingAPIClient and FloatingManager/License call on the
                    key-bound product (hwbased) and on a plain product (plain) succeeds.
  PHASE = pulled  : the key is gone: every call on hwbased raises ClientError
                    hardware_key_not_accessible naming its action; plain keeps working.
Env: KF_USER / KF_PASSWORD = credentials for authentication mode (unset = no-auth mode).
Prints "OK <phase>" and exits 0 on success; any failure raises (non-zero exit).
"""

import datetime
import json
import os
import sys
import tempfile

from licensespring.api.error import ClientError
from licensespring.floating_server import FloatingAPIClient
from licensespring.licensefile.config import Configuration
from licensespring.licensefile.floating_manager import FloatingManager

HOST, PHASE = sys.argv[1], sys.argv[2]
USER, PASSWORD = os.environ.get("KF_USER"), os.environ.get("KF_PASSWORD")
# `https` for the TLS test (the CA comes from REQUESTS_CA_BUNDLE).
PROTOCOL = os.environ.get("KF_PROTOCOL", "http")
PRODUCTS = ["plain", "hwbased"]


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def client():
    c = FloatingAPIClient(api_protocol=PROTOCOL, api_domain=HOST)
    check(c.is_floating_server_v2() is False, "must be detected as a v1 server")
    if USER:
        r = c.auth(USER, PASSWORD)
        check(r["message"] == "Login successful" and r["token"], f"auth: {r}")
    return c


def borrow_until(hours=1):
    t = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=hours)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def raw_client_flow(c, product, who):
    r = c.register_user(product=product, user=who, os_hostname="ws-1")
    check(isinstance(r["license_json"], str), "license_json must be a string")
    lj = json.loads(r["license_json"])
    lid = lj["id"]
    check(r["floating_slots_in_use"] >= 1, f"seats: {r}")
    check("user" not in r, "no top-level user")
    check(lj["product_details"]["short_code"] == product, "short_code")
    b = c.borrow(product=product, user=who, borrowed_until=borrow_until(), license_id=lid)
    check(b["borrowed_until"].endswith("Z"), f"borrow: {b}")
    cons = c.add_consumption(product=product, consumptions=2, license_id=lid, user=who)
    check(cons["id"] == lid and cons["total_consumptions"] >= 2, f"consumption: {cons}")
    fc = c.add_feature_consumption(product=product, feature_code="cf", consumptions=1, license_id=lid, user=who)
    check(fc["code"] == "cf" and fc["total_consumptions"] >= 1, f"feature consumption: {fc}")
    fr = c.feature_register(product=product, feature_code="fl", user=who, license_id=lid)
    check(fr["code"] == "fl" and fr["floating_in_use_devices"] == 1, f"feature register: {fr}")
    rel = c.feature_release(product=product, feature_code="fl", user=who, license_id=lid)
    check("feature_released" in str(rel), f"feature release: {rel}")
    un = c.unregister_user(product=product, user=who, license_id=lid)
    check("user_unregistered" in str(un), f"unregister: {un}")
    return lid


def manager(product, path):
    conf = Configuration(
        product=product,
        api_key="unused",
        shared_key="unused",
        api_domain=HOST,
        api_protocol=PROTOCOL,
        file_path=path,
        verify_license_signature=False,
    )
    fm = FloatingManager(conf)
    if USER:
        fm.auth(USER, PASSWORD)
    return fm


def manager_flow(product, path):
    fm = manager(product, path)
    check(fm.is_online(), "is_online needs 200 at /")
    lic = fm.register(os_hostname="ws-2")
    check(lic.is_floating(), "is_floating")
    lid = lic.id()
    check(isinstance(lid, int), "id")
    check(lic.floating_timeout() == 30, f"floating_timeout {lic.floating_timeout()}")
    lic.check()
    lic.local_check()
    before = lic.total_consumptions()
    lic.add_local_consumption(3)
    check(lic.sync_consumption() is True, "sync_consumption")
    check(lic.total_consumptions() == before + 3, f"total {lic.total_consumptions()} vs {before}+3")
    lic.add_local_feature_consumption("cf", 1)
    check(lic.sync_feature_consumption("cf") is True, "sync_feature_consumption")
    lic.check_feature("fl")
    lic.release_feature("fl")
    lic.floating_borrow(borrow_until(2))
    check(lic.is_borrowed(), "is_borrowed")
    lic.floating_release(throw_e=True)
    # A second manager process reloads the license file.
    again = manager(product, path).load_license()
    check(again.id() == lid, "reload")
    check(fm.unregister(license_id=lid) is not None, "unregister")
    return lid


def expect_key_error(fn, action):
    try:
        fn()
    except ClientError as e:
        check(e.status == 400, f"status {e.status}")
        check(e.code == "hardware_key_not_accessible", f"code {e.code}")
        check(
            e.message == f"No available valid hardware key to perform the action: {action}",
            f"message {e.message!r}",
        )
        return
    raise AssertionError(f"{action}: expected hardware_key_not_accessible")


def plugged():
    c = client()
    for product in PRODUCTS:
        raw_client_flow(c, product, "alice")
        # unregister_all (GET, no body)
        c.register_user(product=product, user="bob")
        check(c.unregister_all() == "", "unregister_all returns an empty body")
        with tempfile.TemporaryDirectory() as d:
            manager_flow(product, d)
    # Leave a seat for the pulled phase to act on.
    c.register_user(product="hwbased", user="carol")


def pulled():
    c = client()
    raw_client_flow(c, "plain", "dave")
    lid = None
    for l in [c.register_user(product="plain", user="erin")]:
        lid = json.loads(l["license_json"])["id"]
    check(lid is not None, "plain works without the key")
    p = "hwbased"
    expect_key_error(lambda: c.register_user(product=p, user="carol"), "registering user")
    expect_key_error(lambda: c.borrow(product=p, user="carol", borrowed_until=borrow_until()), "borrowing license")
    expect_key_error(lambda: c.add_consumption(product=p, consumptions=1), "adding consumption")
    expect_key_error(
        lambda: c.add_feature_consumption(product=p, feature_code="cf", consumptions=1), "adding feature consumption"
    )
    expect_key_error(lambda: c.feature_register(product=p, feature_code="fl", user="carol"), "registering feature")
    expect_key_error(lambda: c.feature_release(product=p, feature_code="fl", user="carol"), "releasing feature")
    expect_key_error(lambda: c.unregister_user(product=p, user="carol"), "unregistering user")
    with tempfile.TemporaryDirectory() as d:
        fm = manager(p, d)
        expect_key_error(lambda: fm.register(), "registering user")
    # unregister_all still answers (it skips licenses whose key is missing).
    check(c.unregister_all() == "", "unregister_all")


{"plugged": plugged, "pulled": pulled}[PHASE]()
print(f"OK {PHASE}")
