"""Access: TLS (and mutual TLS) round trips with certificates made here, tokens only from a file or the
environment, non-ASCII tokens as a sentence, failed attempts rate-limited, no silent exposure off
loopback, and an exclusively bound port."""
from __future__ import annotations

import datetime
import ipaddress
import logging

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cinegen.common.client import GeneratorClient, RequestRejected, ServerUnavailable

from server_kit import private_server, tiny_request


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _certificate(subject: str, key, issuer_name, issuer_key, *, ca: bool, san=None) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .issuer_name(issuer_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate, as PEM files."""
    folder = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cinegen test CA")])
    ca = _certificate("cinegen test CA", ca_key, ca_name, ca_key, ca=True)
    files = {"ca.pem": ca.public_bytes(serialization.Encoding.PEM)}
    for name, san in (("server", [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
                      ("client", None)):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _certificate(name, key, ca_name, ca_key, ca=False, san=san)
        files[f"{name}.pem"] = cert.public_bytes(serialization.Encoding.PEM)
        files[f"{name}.key"] = _pem_key(key)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def test_tls_round_trip_with_a_certificate_made_here(registry, pki, tmp_path):
    with private_server(registry, tls_cert=pki / "server.pem", tls_key=pki / "server.key") as server:
        with GeneratorClient(server.address, root_certificates=(pki / "ca.pem").read_bytes(), timeout=20) as c:
            assert c.capabilities().protocol_version == 1
            result = c.run(tiny_request(tmp_path))
            assert result.state == "completed" and (tmp_path / result.outputs[0]).exists()
        with GeneratorClient(server.address, timeout=3) as plain:
            with pytest.raises(ServerUnavailable):
                plain.capabilities()  # a plain-text client cannot talk to a TLS server


def test_cli_generate_reaches_a_tls_server_with_tls_ca(registry, pki, tmp_path, monkeypatch, capsys):
    from cinegen.server.cli import main

    monkeypatch.delenv("CINEGEN_TOKEN", raising=False)
    with private_server(registry, tls_cert=pki / "server.pem", tls_key=pki / "server.key") as server:
        code = main(["generate", "image", "--server", server.address, "--tls-ca", str(pki / "ca.pem"),
                     "--prompt", "x", "--steps", "1", "--width", "32", "--height", "32",
                     "--out", str(tmp_path / "cli.####.exr")])
    assert code == 0, capsys.readouterr()
    assert (tmp_path / "cli.1001.exr").exists()


def test_mutual_tls_needs_a_client_certificate(registry, pki):
    with private_server(registry, tls_cert=pki / "server.pem", tls_key=pki / "server.key",
                        tls_client_ca=pki / "ca.pem") as server:
        ca = (pki / "ca.pem").read_bytes()
        with GeneratorClient(server.address, root_certificates=ca, timeout=3) as anonymous:
            with pytest.raises(ServerUnavailable):
                anonymous.capabilities()
        with GeneratorClient(server.address, root_certificates=ca, timeout=20,
                             certificate_chain=(pki / "client.pem").read_bytes(),
                             private_key=(pki / "client.key").read_bytes()) as known:
            assert known.capabilities().protocol_version == 1


def test_non_ascii_tokens_are_a_sentence_and_failures_are_rate_limited(registry):
    from cinegen.server.server import AUTH_FAILURES_ALLOWED

    with private_server(registry, token="s3cret") as server:
        with pytest.raises(RequestRejected) as err:
            GeneratorClient(server.address, token="sécret")
        assert err.value.code == "UNAUTHENTICATED" and "ASCII" in err.value.message
        with GeneratorClient(server.address, token="s3cret") as good:
            assert good.capabilities().protocol_version == 1
            with GeneratorClient(server.address, token="wrong") as bad:
                codes = []
                for _ in range(AUTH_FAILURES_ALLOWED + 2):
                    with pytest.raises(RequestRejected) as err:
                        bad.list_jobs()
                    codes.append(err.value.code)
            assert set(codes[:AUTH_FAILURES_ALLOWED - 1]) == {"UNAUTHENTICATED"}
            assert codes[-1] == "RESOURCE_EXHAUSTED"
            with pytest.raises(RequestRejected) as err:
                good.list_jobs()  # even the right token waits: guessing gains nothing
            assert err.value.code == "RESOURCE_EXHAUSTED" and "wait" in err.value.message


def test_a_hand_written_client_hears_how_to_send_the_token(registry):
    import grpc

    from cinegen.common.proto import generator_pb2 as pb
    from server_kit import stub

    with private_server(registry, token="s3cret") as server:
        channel, s = stub(server.address)

        def answer(header):
            try:
                return s.ListJobs(pb.ListJobsRequest(), metadata=[("authorization", header)], timeout=10) and "OK"
            except grpc.RpcError as exc:
                return exc.details()
        assert "'authorization: Bearer TOKEN'" in answer("s3cret")  # the token without the scheme
        assert "not this server's token" in answer("Bearer wrong")  # was: "needs an access token" for both
        assert answer("bearer s3cret") == "OK"  # the scheme is case-insensitive (RFC 7235)
        channel.close()


class _Aborted(Exception):
    pass


class _Context:
    def peer(self):
        return "ipv4:127.0.0.1:5555"

    def abort(self, code, details):
        raise _Aborted(code, details)


def test_a_non_ascii_authorization_header_is_unauthenticated_with_a_sentence():
    """gRPC's Python client refuses such a header itself; other clients may send it as raw bytes."""
    import grpc

    from cinegen.server.server import TokenAuth

    auth = TokenAuth("s3cret")
    with pytest.raises(_Aborted) as err:
        auth._admit(_Context(), False, "Bearer sécret")
    assert err.value.args[0] == grpc.StatusCode.UNAUTHENTICATED and "ASCII" in err.value.args[1]
    auth._admit(_Context(), True, "Bearer s3cret")  # the right token passes


def test_off_loopback_needs_a_token_and_roots_unless_insecure(caplog, tmp_path):
    from cinegen.server.server import check_exposure
    from cinegen.server.service import ServerConfig

    with pytest.raises(SystemExit, match="token"):
        check_exposure(ServerConfig(host="0.0.0.0"))
    with pytest.raises(SystemExit, match="--output-root"):
        check_exposure(ServerConfig(host="0.0.0.0", token="t0ken"))
    check_exposure(ServerConfig(host="0.0.0.0", token="t0ken", output_roots=[tmp_path]))
    check_exposure(ServerConfig(host="127.0.0.1"))
    with caplog.at_level(logging.WARNING):
        check_exposure(ServerConfig(host="0.0.0.0", insecure=True))
    assert "--insecure" in caplog.text
    with pytest.raises(SystemExit, match="ASCII"):
        check_exposure(ServerConfig(token="sécret"))


def test_a_second_server_on_the_same_port_fails_with_a_sentence(registry):
    from cinegen.server.server import start_server
    from cinegen.server.service import ServerConfig

    with private_server(registry) as first:
        with pytest.raises(SystemExit, match="another server"):
            start_server(ServerConfig(port=first.port, use_hf_cache=False))
        with GeneratorClient(first.address) as c:
            assert c.capabilities().protocol_version == 1


def test_the_token_never_comes_from_argv(tmp_path, monkeypatch, capsys):
    from cinegen.server.cli import build_parser
    from cinegen.server.job_client import server_config

    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--token", "s3cret"])
    assert "--token-file" in capsys.readouterr().err
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    monkeypatch.setenv("CINEGEN_TOKEN", "from-env")
    args = build_parser().parse_args(["serve", "--token-file", str(token_file), "--state-dir", str(tmp_path),
                                      "--max-queue", "7"])
    config = server_config(args, host=args.host, port=args.port)
    assert config.token == "from-file" and config.limits.max_queue == 7 and config.state_dir == tmp_path
    args = build_parser().parse_args(["serve"])
    config = server_config(args, host=args.host, port=args.port)
    assert config.token == "from-env" and "cinegen" in str(config.state_dir)
