"""TLS to the broker: amqps:// URLs with broker.tls, against a RabbitMQ node with
a TLS listener and certificates made by the test with openssl.

The PKI: a CA that signed the broker's certificate (DNS:localhost only, so
127.0.0.1 is a wrong host name) and a client certificate (CN=wqd-client), and
an unrelated "other" CA. The node asks for a client certificate and verifies
it if one is sent, but does not require one (so `--url` works without one).
It is a module's own node, not the session's plain broker.
"""

import json
import secrets
import shutil
import ssl
import subprocess
from pathlib import Path

import pika
import pytest

from tests.support.broker import MISSING_RABBITMQ_MESSAGE, BrokerNode, free_port, port_open, rabbitmq_available
from tests.support.daemon import Wqd, pool, run_cli, task_body, url_option, wqd_env
from tests.support.waiting import wait_for
from wqd.broker import amqp
from wqd.config import BrokerConfig, TLSConfig

EXIT_UNAVAILABLE = 69


def _openssl(*args, cwd):
    openssl = shutil.which("openssl")
    assert openssl, "openssl not found: install Debian's openssl package (apt-get install openssl)"
    result = subprocess.run([openssl, *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"openssl {' '.join(args)} failed:\n{result.stderr}"


def _make_ca(directory: Path, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN=wqd test {name}",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             cwd=directory)


def _make_cert(directory: Path, name: str, subject: str, extensions: str) -> None:
    (directory / f"{name}.ext").write_text(
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n" + extensions)
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject, cwd=directory)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-set_serial", f"0x{secrets.token_hex(8)}", "-days", "2", "-out", f"{name}.pem",
             "-extfile", f"{name}.ext", cwd=directory)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("pki")
    _make_ca(directory, "ca")
    _make_ca(directory, "other")
    _make_cert(directory, "server", "/CN=localhost", "subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\n")
    _make_cert(directory, "client", "/CN=wqd-client", "extendedKeyUsage=clientAuth\n")
    return directory


class TLSBrokerNode(BrokerNode):
    """A throwaway node that also listens for amqps:// on a port of its own."""

    def __init__(self, base_dir: Path, pki: Path):
        super().__init__(base_dir)
        self.tls_port = free_port(exclude={self.port, self.dist_port})
        self.shared_dirs.append(pki)  # read by a node in a chroot (WQD_TEST_RABBITMQ_ROOT)
        self.extra_conf = "\n".join([  # written into rabbitmq.conf by start()
            f"listeners.ssl.default = 127.0.0.1:{self.tls_port}",
            f"ssl_options.cacertfile = {pki / 'ca.pem'}",
            f"ssl_options.certfile = {pki / 'server.pem'}",
            f"ssl_options.keyfile = {pki / 'server.key'}",
            "ssl_options.verify = verify_peer",
            "ssl_options.fail_if_no_peer_cert = false",
        ])


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory, pki):
    if not rabbitmq_available():
        pytest.fail(MISSING_RABBITMQ_MESSAGE, pytrace=False)
    node = TLSBrokerNode(tmp_path_factory.mktemp("rabbitmq-tls"), pki)
    node.start()
    try:
        wait_for(lambda: port_open(node.tls_port), 30,
                 message=lambda: f"no TLS listener on {node.tls_port}:\n{node.log_tail()}")
        yield node
    finally:
        node.stop()


def _url(node, host="localhost"):
    return f"amqps://guest:guest@{host}:{node.tls_port}/%2F"


def _tls(pki, ca="ca", client=True):
    tls = {"ca_file": str(pki / f"{ca}.pem")}
    if client:
        tls.update(cert_file=str(pki / "client.pem"), key_file=str(pki / "client.key"))
    return tls


def _config(tmp_path, url, tls, queue) -> Path:
    tls_lines = "".join(f"    {key}: {value}\n" for key, value in tls.items())
    path = tmp_path / "wqd.yaml"
    path.write_text(f"broker:\n  url: {url}\n  tls:\n{tls_lines}metrics: {{listen: null}}\n"
                    f"pools:\n  - {{name: default, queue: {queue}, handler: handlers:task}}\n")
    return path


def _connections(node) -> list:
    """The node's connections: their client-provided name, TLS or not, and client certificate."""
    rows = json.loads(node.ctl("list_connections", "-q", "--formatter", "json",
                               "client_properties", "ssl", "peer_cert_subject"))
    for row in rows:
        row["name"] = next((value for key, _, value in row.pop("client_properties") if key == "connection_name"), "")
    return rows


def _one_line_error(result) -> str:
    assert result.returncode == EXIT_UNAVAILABLE, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"one line, no traceback: {result.stderr}"
    assert "guest:guest" not in result.stderr
    return lines[0]


def test_publish_and_run_with_the_configured_ca_and_client_certificate(tls_broker, pki, tmp_path):
    queue = "tls.work"
    config = _config(tmp_path, _url(tls_broker), _tls(pki), queue)
    published = run_cli("publish", "-c", str(config), task_body("over-tls"), env=wqd_env(tmp_path / "r"))
    assert published.returncode == 0 and " [x] Sent" in published.stdout, published

    wqd = Wqd(tmp_path / "wqd", _url(tls_broker), [pool(queue, workers=1)])
    wqd.config["broker"]["tls"] = _tls(pki)
    wqd.write_config()
    try:
        wqd.start()
        wait_for(lambda: wqd.ended_ids() == ["over-tls"], 30, message=lambda: f"task done:\n{wqd.logs()}")
        workers = [c for c in _connections(tls_broker) if c["name"].startswith("wqd worker")]
        assert workers and all(c["ssl"] and c["peer_cert_subject"] == "CN=wqd-client" for c in workers), workers
        assert wqd.stop() == 0
    finally:
        wqd.cleanup()


def test_publish_url_trusts_the_system_cas_which_ssl_cert_file_can_name(tls_broker, pki, tmp_path):
    url, password = url_option(_url(tls_broker))
    args = ("publish", "--url", url, "--queue", "tls.url", "hello")
    env = wqd_env(tmp_path / "r", {"SSL_CERT_FILE": str(pki / "ca.pem"), **password})
    published = run_cli(*args, env=env)
    assert published.returncode == 0 and " [x] Sent 'hello'" in published.stdout, published

    env.pop("SSL_CERT_FILE")
    error = _one_line_error(run_cli(*args, env=env))
    assert "certificate verify failed" in error, error


def test_an_unknown_ca_is_refused_with_a_one_line_error(tls_broker, pki, tmp_path):
    config = _config(tmp_path, _url(tls_broker), _tls(pki, ca="other"), "tls.unknown-ca")
    error = _one_line_error(run_cli("publish", "-c", str(config), "x", env=wqd_env(tmp_path / "r")))
    assert error == (
        f"wqd publish: TLS handshake with the broker at amqps://guest:***@localhost:{tls_broker.tls_port}/%2F "
        "failed: certificate verify failed: self-signed certificate in certificate chain "
        "(does broker.tls.ca_file name the CA that signed the broker's certificate?)"), error


def test_a_wrong_host_name_is_refused_with_a_one_line_error(tls_broker, pki, tmp_path):
    config = _config(tmp_path, _url(tls_broker, host="127.0.0.1"), _tls(pki), "tls.wrong-host")
    error = _one_line_error(run_cli("publish", "-c", str(config), "x", env=wqd_env(tmp_path / "r")))
    assert error.startswith(f"wqd publish: TLS handshake with the broker at amqps://guest:***@127.0.0.1:"
                            f"{tls_broker.tls_port}/%2F failed: certificate verify failed: "
                            "IP address mismatch, certificate is not valid for '127.0.0.1'"), error


def test_run_keeps_retrying_an_unverifiable_broker_and_logs_why(tls_broker, pki, tmp_path):
    wqd = Wqd(tmp_path / "wqd", _url(tls_broker), [pool("tls.retrying", workers=1)])
    wqd.config["broker"]["tls"] = _tls(pki, ca="other")
    wqd.write_config()
    try:
        wqd.start(wait_ready=False)
        wait_for(lambda: "certificate verify failed: self-signed certificate in certificate chain" in wqd.logs(),
                 30, message=lambda: f"no TLS error logged:\n{wqd.logs()}")
        assert wqd.proc.poll() is None and wqd.http("/readyz")[0] == 503
        assert "guest:guest" not in wqd.logs()
        assert wqd.stop() == 0
    finally:
        wqd.cleanup()


def test_a_plain_port_and_unusable_files_are_named_in_the_error(tls_broker, pki):
    plain_port_url = f"amqps://guest:guest@localhost:{tls_broker.port}/%2F"
    plain = BrokerConfig(urls=(plain_port_url,), tls=TLSConfig(**_tls(pki)))
    with pytest.raises(ssl.SSLError) as caught:
        amqp.connect(plain)
    assert amqp.describe_error(caught.value, plain.url).endswith(
        "failed: wrong version number (is that port a TLS listener? amqps:// needs one, usually port 5671)")

    missing = BrokerConfig(urls=(_url(tls_broker),), tls=TLSConfig(ca_file=str(pki / "missing.pem")))
    with pytest.raises(amqp.TLSFileError) as caught:
        amqp.connect(missing)
    assert amqp.describe_error(caught.value, missing.url) == (
        f"cannot connect to the broker at amqps://guest:***@localhost:{tls_broker.tls_port}/%2F: cannot use "
        f"broker.tls.ca_file '{pki / 'missing.pem'}': No such file or directory")

    mismatched = TLSConfig(ca_file=str(pki / "ca.pem"), cert_file=str(pki / "client.pem"),
                           key_file=str(pki / "server.key"))
    with pytest.raises(amqp.TLSFileError, match="cannot use broker.tls.cert_file .*client.pem' with "
                                                "broker.tls.key_file .*server.key'"):
        amqp.tls_context(mismatched)


def test_parameters_verify_the_certificate_and_host_with_tls_1_2_or_later():
    params = amqp.parameters(BrokerConfig(urls=("amqps://u:p@broker.example:5671/%2F",)))
    context = params.ssl_options.context
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert params.ssl_options.server_hostname == "broker.example"
    assert amqp.parameters(BrokerConfig(urls=("amqp://u:p@broker.example/%2F",))).ssl_options is None
    assert isinstance(params, pika.URLParameters)
