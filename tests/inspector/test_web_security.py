"""Security of the review page: where it may listen, logins and roles, tokens, CSRF and cross-site posts, images
only by database id from the station's own directories, request size limits, host names."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from sqlalchemy import select, update
from webkit import BASE, client, csrf_of, process_frames, same_site, station_overrides

from inspector.config import ConfigError
from inspector.db.models import Frame, ReviewEvent, Template
from inspector.web.app import safe_next
from inspector.web.auth import hash_password, new_token, verify_password
from inspector.web.serve import check_listen

PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def password_hash() -> str:
    return hash_password(PASSWORD)


def users(password_hash: str, **web) -> dict:
    token, digest = new_token()
    web = {"users": [{"name": "ann", "role": "reviewer", "password_hash": password_hash},
                     {"name": "vic", "role": "viewer", "password_hash": password_hash}],
           "tokens": [{"name": "mes", "role": "viewer", "sha256": digest}], **web}
    return {"web": web, "_token": token}


def station(make_config, start_daemon, frames, wait, **overrides):
    token = overrides.pop("_token", None)
    cfg = make_config(**station_overrides(**overrides))
    daemon = start_daemon(cfg)
    ids = process_frames(daemon, frames, wait, 4)
    return cfg, daemon, ids, token


def login(web, name: str, password: str = PASSWORD):
    form = web.get("/login")
    return web.post("/login", data={"name": name, "password": password, "csrf": csrf_of(form.text), "next": "/"},
                    headers={"Origin": BASE, "Sec-Fetch-Site": "same-origin"}, follow_redirects=False)


def test_passwords_and_tokens():
    stored = hash_password("s3cret")
    assert stored.startswith("scrypt$") and verify_password("s3cret", stored)
    assert not verify_password("s3cret ", stored) and not verify_password("", stored)
    assert hash_password("s3cret") != stored  # salted
    assert not verify_password("s3cret", "scrypt$garbage")


def test_listening_rules(make_config, password_hash):
    open_cfg = make_config()
    assert check_listen(open_cfg, "127.0.0.1") == (False, None)
    assert check_listen(open_cfg, "::1") == (False, None)
    for host in ("0.0.0.0", "192.168.1.20", "::"):
        with pytest.raises(ConfigError, match="requires logins"):
            check_listen(open_cfg, host)
    with_users = make_config(web=users(password_hash)["web"])
    assert check_listen(with_users, "127.0.0.1") == (True, None)  # users configured: logins even on loopback
    with pytest.raises(ConfigError, match="clear text"):
        check_listen(with_users, "0.0.0.0")
    plain = make_config(web={**users(password_hash)["web"], "allow_plaintext": True})
    required, warning = check_listen(plain, "0.0.0.0")
    assert required and "plain HTTP" in warning
    tls = make_config(web={**users(password_hash)["web"], "tls_certfile": "c.pem", "tls_keyfile": "k.pem"})
    assert check_listen(tls, "0.0.0.0") == (True, None)


def test_serve_refuses_an_open_network_listener(write_config, tmp_path):
    path = write_config()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run([sys.executable, "-m", "inspector.cli", "serve", "--config", str(path), "--host",
                             "0.0.0.0", "--port", "0"], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 2 and "requires logins" in result.stderr


def test_images_only_by_id_from_the_stations_directories(make_config, start_daemon, frames, wait, tmp_path):
    cfg, daemon, ids, _ = station(make_config, start_daemon, frames, wait)
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(b"\xff\xd8 not for the page")
    with daemon.factory() as db:
        frame = db.scalars(select(Frame).where(Frame.status == "defective")).first()
        template_id = frame.template_id
    with client(cfg) as web:
        assert web.get(f"/img/frames/{frame.id}/image").status_code == 200
        for path in ("/img/frames/..%2F..%2F..%2Fetc%2Fpasswd/image", "/img/frames/%2Fetc%2Fpasswd/image",
                     f"/img/frames/{frame.id}/..%2F..%2Fetc%2Fpasswd", "/img/frames/1.5/image",
                     f"/img/frames/{frame.id}/../../../../etc/passwd", "/static/..%2F..%2Fapp.py",
                     "/static/../../../etc/passwd", f"/img/detections/{frame.id}/..%2Fsecret"):
            response = web.get(path)
            assert response.status_code in (404, 422), (path, response.status_code)
            assert b"root:" not in response.content
        # a database row pointing outside the station's directories (edited by hand, or another host's path)
        with daemon.factory.begin() as db:
            db.execute(update(Frame).where(Frame.id == frame.id).values(stored_path="/etc/passwd"))
        response = web.get(f"/img/frames/{frame.id}/image")
        assert response.status_code == 403 and b"root:" not in response.content
        # a symlink inside processed/ that leads out of it
        link = cfg.dir_for("processed") / "cam1" / "evil.jpg"
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(secret)
        with daemon.factory.begin() as db:
            db.execute(update(Frame).where(Frame.id == frame.id).values(stored_path=str(link)))
        assert web.get(f"/img/frames/{frame.id}/image").status_code == 403
        with daemon.factory.begin() as db:
            db.execute(update(Template).where(Template.id == template_id).values(path="/etc/hostname"))
            db.execute(update(Frame).where(Frame.id == frame.id).values(stored_path=None))
        assert web.get(f"/img/frames/{frame.id}/image").status_code == 404
        assert web.get("/img/frames/999999/image").status_code == 404


def test_logins_roles_tokens_and_cross_site_posts(make_config, start_daemon, frames, wait, password_hash):
    cfg, daemon, ids, token = station(make_config, start_daemon, frames, wait, **users(password_hash))
    frame_id = ids[-1]
    with client(cfg, login_required=True) as web:
        # nothing without a login
        assert web.get("/", headers={"Accept": "text/html"}, follow_redirects=False).status_code == 303
        for path in ("/api/frames", f"/ui/frames/{frame_id}", f"/img/frames/{frame_id}/image", "/export.csv",
                     "/live", "/trends?x=1", "/ui/rows"):
            assert web.get(path).status_code == 401, path
        assert web.post(f"/api/frames/{frame_id}/reviews", json={"action": "confirm"}).status_code == 401
        # wrong password, unknown user
        assert login(web, "ann", "nope").status_code == 401
        assert login(web, "mallory").status_code == 401
        # forged / missing bearer tokens
        assert web.get("/api/frames", headers={"Authorization": "Bearer forged"}).status_code == 401
        assert web.get("/api/frames", headers={"Authorization": f"Bearer {token}x"}).status_code == 401
        assert web.get("/api/frames", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        # a viewer token cannot review
        assert web.post(f"/api/frames/{frame_id}/reviews", json={"action": "confirm"},
                        headers={"Authorization": f"Bearer {token}"}).status_code == 403
    with client(cfg, login_required=True) as viewer:
        assert login(viewer, "vic").status_code == 303
        page = viewer.get("/")
        assert page.status_code == 200 and "vic" in page.text
        refused = viewer.post(f"/api/frames/{frame_id}/reviews", json={"action": "confirm"},
                              headers=same_site(csrf_of(page.text)))
        assert refused.status_code == 403 and "viewer role" in refused.json()["detail"]
    with client(cfg, login_required=True) as ann:
        assert login(ann, "ann").status_code == 303
        token_ann = csrf_of(ann.get("/").text)
        url = f"/api/frames/{frame_id}/reviews"
        body = {"action": "confirm"}
        assert ann.post(url, json=body).status_code == 403  # no CSRF token
        assert ann.post(url, json=body, headers={**same_site(token_ann), "X-CSRF-Token": "forged"}).status_code == 403
        assert ann.post(url, json=body, headers={**same_site(token_ann), "Origin": "http://evil.example"}).status_code == 403
        assert ann.post(url, json=body, headers={**same_site(token_ann), "Sec-Fetch-Site": "cross-site"}).status_code == 403
        assert ann.post(url, json=body, headers={**same_site(token_ann), "Origin": "null"}).status_code == 403
        # a cross-site HTML form post: form-encoded, no custom header, foreign origin
        assert ann.post(url, data={"action": "confirm"}, headers={"Origin": "http://evil.example",
                                                                  "Sec-Fetch-Site": "cross-site"}).status_code == 403
        ok = ann.post(url, json=body, headers=same_site(token_ann))
        assert ok.status_code == 200, ok.text
        browser_form = {"Origin": BASE, "Sec-Fetch-Site": "same-origin"}  # the header's form: token as a field
        assert ann.post("/logout", data={"csrf": "forged"}, headers=browser_form).status_code == 403
        assert ann.post("/logout", data={"csrf": token_ann}, headers=browser_form,
                        follow_redirects=False).status_code == 303
        assert ann.post(url, json=body, headers=same_site(token_ann)).status_code == 401  # session ended
    with daemon.factory() as db:
        events = db.scalars(select(ReviewEvent)).all()
    assert [(e.reviewer, e.action) for e in events] == [("ann", "confirm")]  # only the legitimate one


def test_loopback_without_users_still_needs_csrf_and_a_known_host(make_config, start_daemon, frames, wait):
    cfg, daemon, ids, _ = station(make_config, start_daemon, frames, wait)
    with client(cfg) as web:
        token = csrf_of(web.get("/").text)
        url = f"/api/frames/{ids[-1]}/reviews"
        assert web.post(url, json={"action": "confirm"}).status_code == 403
        assert web.post(url, json={"action": "confirm"},
                        headers={**same_site(token), "Origin": "http://evil.example:8080"}).status_code == 403
        assert web.post(url, json={"action": "confirm"}, headers=same_site(token)).status_code == 200
        # DNS rebinding: evil.example resolved to 127.0.0.1 still sends its own name
        assert web.get("/", headers={"Host": "evil.example"}).status_code == 421
    with client(cfg, base_url="http://localhost") as web:
        assert web.get("/").status_code == 200


def test_request_size_and_field_limits(make_config, start_daemon, frames, wait):
    cfg, daemon, ids, _ = station(make_config, start_daemon, frames, wait, web={"max_body_bytes": 4096})
    with client(cfg) as web:
        token = csrf_of(web.get("/").text)
        url = f"/api/frames/{ids[-1]}/reviews"
        big = web.post(url, content=b"{" + b" " * 10_000 + b"}", headers={**same_site(token),
                                                                          "Content-Type": "application/json"})
        assert big.status_code == 413

        def chunks():
            for _ in range(20):
                yield b" " * 1024

        chunked = web.post(url, content=chunks(), headers={**same_site(token), "Content-Type": "application/json"})
        assert chunked.status_code == 413
        long_comment = web.post(url, json={"action": "confirm", "comment": "x" * 3000}, headers=same_site(token))
        assert long_comment.status_code == 422
        assert web.post(url, json={"action": "confirm", "extra": 1}, headers=same_site(token)).status_code == 422
        assert web.get("/api/frames?camera=" + "c" * 500).status_code == 400
        assert web.get("/api/frames?cursor=../../etc").status_code == 400
        assert web.get("/api/frames?limit=100000").status_code == 200  # clamped to the page maximum
    with daemon.factory() as db:
        assert db.scalar(select(ReviewEvent.id)) is None


def test_login_redirects_stay_on_this_site():
    assert safe_next("/frames/3?kind=alarms") == "/frames/3?kind=alarms"
    for target in ("https://evil.example/", "//evil.example/x", "/\\evil.example", "", None, "javascript:alert(1)"):
        assert safe_next(target) == "/"


def test_password_checks_are_bounded(monkeypatch, password_hash):
    """A flood of logins cannot run more scrypt checks at once than LOGIN_SLOTS (memory and CPU stay bounded)."""
    from inspector.web import auth as auth_module
    from inspector.web.config import WebConfig

    monkeypatch.setattr(auth_module, "LOGIN_WAIT_S", 0.1)
    authenticator = auth_module.Authenticator(WebConfig(users=[{"name": "ann", "role": "reviewer",
                                                                "password_hash": password_hash}]), True)
    assert authenticator.login("ann", PASSWORD) is not None
    for _ in range(auth_module.LOGIN_SLOTS):
        authenticator._login_slots.acquire()  # every slot busy with someone else's check
    with pytest.raises(auth_module.LoginBusy):
        authenticator.login("ann", PASSWORD)
    authenticator._login_slots.release()
    sid, session = authenticator.login("ann", PASSWORD)
    assert authenticator.session(sid).principal.name == "ann" and session.principal.role == "reviewer"
