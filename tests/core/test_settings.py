import subprocess
import sys

import pytest
from pydantic import ValidationError

from workers.core.errors import SettingsError
from workers.core.settings import KibanSettings, RedisSettings, Settings, env_name, load_settings, redact_url


def test_defaults_need_no_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    settings = load_settings()
    assert settings.redis_url is None
    assert settings.bridge_callback_key_headers == ["x-api-key", "xApiKeyCallback"]
    assert settings.kiban_base_url == "https://sandbox.workfloo.kiban.com"
    assert settings.bridge_max_body_bytes == 65536


def test_comma_separated_keys_allow_rotation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_CALLBACK_KEYS", "old-key-1, new-key-2")
    settings = load_settings()
    assert [k.get_secret_value() for k in settings.bridge_callback_keys] == ["old-key-1", "new-key-2"]


def test_secrets_never_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_KIBAN_API_KEY", "kiban-super-secret")
    monkeypatch.setenv("BRIDGE_CALLBACK_KEYS", "callback-super-secret")
    monkeypatch.setenv("BRIDGE_KOMPLIANT_SECRET_KEY", "kompliant-super-secret")
    monkeypatch.setenv("BRIDGE_DATA_KEYS", "k1:" + "QUJD" * 10 + "QUI=")
    settings = load_settings()
    text = repr(settings) + str(settings) + settings.model_dump_json()
    for secret in ("kiban-super-secret", "callback-super-secret", "kompliant-super-secret"):
        assert secret not in text
    assert set(settings.secret_values()) == {
        "kiban-super-secret",
        "callback-super-secret",
        "kompliant-super-secret",
        "k1:" + "QUJD" * 10 + "QUI=",
    }


def test_invalid_setting_names_the_variable_without_its_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "nonsense-with-password")
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert "REDIS_URL" in str(info.value)
    assert "nonsense-with-password" not in str(info.value)


def test_invalid_number_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_MAX_BODY_BYTES", "lots")
    with pytest.raises(SettingsError, match="BRIDGE_MAX_BODY_BYTES"):
        load_settings()


def test_cli_exits_non_zero_with_one_clear_line() -> None:
    env = {"REDIS_URL": "nonsense", "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-m", "workers.ops.cli", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1
    assert "REDIS_URL" in lines[0]


def test_http_subscriber_secrets_reach_the_redactor(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "whsec_c3Vic2NyaWJlci1zZWNyZXQtdmFsdWUtMTIzNDU2"
    monkeypatch.setenv("BRIDGE_HTTP_SUBSCRIBERS", f'[{{"url": "https://x.example/h", "secret": "{secret}"}}]')
    assert secret in load_settings().secret_values()


def test_intake_transport_defaults_to_stream_and_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BRIDGE_INTAKE_TRANSPORT", raising=False)
    assert load_settings().bridge_intake_transport == "stream"
    monkeypatch.setenv("BRIDGE_INTAKE_TRANSPORT", "redis-py")
    assert load_settings().bridge_intake_transport == "redis-py"
    monkeypatch.setenv("BRIDGE_INTAKE_TRANSPORT", "carrier-pigeon")
    with pytest.raises(SettingsError, match="BRIDGE_INTAKE_TRANSPORT"):
        load_settings()


def test_a_section_validates_on_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_KIBAN_BASE_URL", "https://kiban.example/")
    monkeypatch.setenv("BRIDGE_KIBAN_NIP_SENT_MARKERS", "a, b")
    kiban = KibanSettings()
    assert kiban.kiban_base_url == "https://kiban.example"
    assert kiban.kiban_nip_sent_markers == ["a", "b"]
    assert not hasattr(kiban, "redis_url")


REDIS_PASSWORD = "r3dis-Pa55/word"
REDIS_URL_WITH_PASSWORDS = (
    f"redis+sentinel://bridge:{REDIS_PASSWORD.replace('/', '%2F')}@s1:26379,s2:26379/bridge/0"
    "?sentinel_password=sentinel-Pa55&socket_timeout=1"
)


def test_redis_url_passwords_never_in_repr_str_or_dumps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", REDIS_URL_WITH_PASSWORDS)
    settings = load_settings()
    assert settings.redis_url == REDIS_URL_WITH_PASSWORDS  # the clients still get the real URL
    masked = "redis+sentinel://bridge:***@s1:26379,s2:26379/bridge/0?sentinel_password=***&socket_timeout=1"
    for text in (repr(settings), str(settings), settings.model_dump_json(), repr(RedisSettings())):
        assert "Pa55" not in text
        assert masked in text


def test_redis_url_passwords_reach_the_redactor(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", REDIS_URL_WITH_PASSWORDS)
    secrets = load_settings().secret_values()
    assert {REDIS_PASSWORD, REDIS_PASSWORD.replace("/", "%2F"), "sentinel-Pa55"} <= set(secrets)


def test_invalid_redis_url_error_never_shows_its_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", f"http://user:{REDIS_PASSWORD}@db.internal:6379/0")
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert "REDIS_URL" in str(info.value)
    assert "Pa55" not in str(info.value)
    with pytest.raises(ValidationError) as raw:
        RedisSettings()
    assert "Pa55" not in str(raw.value) + repr(raw.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://user:s3cret@db.internal:6380/2", "redis://user:***@db.internal:6380/2"),
        ("redis://:p@ss@db:6379", "redis://:***@db:6379"),
        (
            "rediss://db:6379/0?password=s3cret&ssl_cert_reqs=none",
            "rediss://db:6379/0?password=***&ssl_cert_reqs=none",
        ),
        ("unix://:s3cret@/run/redis.sock?db=1", "unix://:***@/run/redis.sock?db=1"),
        ("redis://user@db:6379/0", "redis://user@db:6379/0"),
        ("redis://127.0.0.1:6380/0", "redis://127.0.0.1:6380/0"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_every_variable_but_redis_url_has_the_bridge_prefix() -> None:
    names = {env_name(field) for field in Settings.model_fields}
    assert {n for n in names if not n.startswith("BRIDGE_")} == {"REDIS_URL"}


def test_a_prefixed_variable_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_RETRY_BASE_SECONDS", "7")
    monkeypatch.setenv("BRIDGE_LOG_LEVEL", "ERROR")
    settings = load_settings()
    assert (settings.retry_base_seconds, settings.log_level) == (7.0, "ERROR")


def test_an_earlier_unprefixed_name_is_refused_naming_the_new_one(monkeypatch: pytest.MonkeyPatch) -> None:
    retry, kiban = "RETRY" + "_BASE_SECONDS", "KIBAN" + "_API_KEY"  # split: kept as they are by renames
    monkeypatch.setenv(retry, "7")
    monkeypatch.setenv(kiban.lower(), "k")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert f"{retry} is now called BRIDGE_{retry}" in message
    assert f"{kiban} is now called BRIDGE_{kiban}" in message
    assert "7" not in message


def test_a_durability_wait_is_held_below_the_redis_socket_timeout() -> None:
    from workers.jobs.durability import wait_ms

    assert load_settings().bridge_durability == "auto"
    assert wait_ms(load_settings(bridge_durability_timeout_ms=1000, redis_timeout_seconds=1)) == 800
    assert wait_ms(load_settings(bridge_durability_timeout_ms=1000, redis_timeout_seconds=2)) == 1000
    assert load_settings(redis_timeout_seconds=0.3).bridge_durability_timeout_ms == 500  # a receiver's
    with pytest.raises(SettingsError, match="BRIDGE_DURABILITY"):
        load_settings(bridge_durability="sometimes")


@pytest.mark.parametrize("field", ["bridge_public_url", "kiban_base_url", "kompliant_base_url"])
def test_plain_http_only_on_loopback_unless_allowed(field: str) -> None:
    with pytest.raises(SettingsError, match=f"{env_name(field)} must be https:// outside loopback"):
        load_settings(**{field: "http://vendor.example.net"})
    for loopback in ("http://127.0.0.1:9000", "http://localhost:9000", "http://[::1]:9000"):
        load_settings(**{field: loopback})
    load_settings(**{field: "http://vendor.example.net", "bridge_allow_plain_http": True})


def test_console_redis_url_is_a_secret_like_redis_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_CONSOLE_REDIS_URL", "redis://operator:console-pw-8c1f@redis:6379/0")
    settings = load_settings()
    for shown in (repr(settings), str(settings), settings.model_dump_json()):
        assert "console-pw-8c1f" not in shown
    assert "console-pw-8c1f" in settings.secret_values()
    monkeypatch.setenv("BRIDGE_CONSOLE_REDIS_URL", "http://operator@redis")
    with pytest.raises(SettingsError, match="BRIDGE_CONSOLE_REDIS_URL"):
        load_settings()
