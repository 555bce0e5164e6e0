"""A deployed client that cannot reach its server says where and why in one line: a TLS name
mismatch ends it at once, an unreachable address after `--give-up` seconds."""

import re

from tests.processes import fedcore, free_port, make_certs, server_port, start_server


def _client(root, address: str, *extra: str):
    return fedcore(
        "client",
        "--server",
        address,
        "--id",
        "client-0",
        "--certs",
        str(root / "certs"),
        "--config",
        str(root / "run" / "config.yaml"),
        *extra,
        cwd=root,
    )


def test_a_server_name_the_certificate_lacks_ends_the_client_with_the_fix(tmp_path):
    make_certs(tmp_path, 1)
    server = start_server(
        tmp_path, "num_clients=1", "clients_per_round=1", "deployment.address=127.0.0.1:0"
    )
    port = server_port(server)
    client = _client(tmp_path, f"127.0.0.1:{port}", "--server-name", "wrong.example")
    output = client.communicate(timeout=120)[0]
    server.kill()
    assert client.returncode == 1, output
    assert output.splitlines()[-1] == (
        f"fedcore client client-0: TLS failure at 127.0.0.1:{port}: the server's certificate is "
        "not for 'wrong.example'; pass the name it was made for (fedcore certs init "
        "--server-name) as --server-name"
    )
    assert "retrying" not in output and "Traceback" not in output


def test_an_unreachable_server_is_named_with_the_cause_and_given_up_on(tmp_path):
    make_certs(tmp_path, 1)
    server = start_server(
        tmp_path, "num_clients=1", "clients_per_round=1", "deployment.address=127.0.0.1:0"
    )
    server_port(server)
    server.kill()  # it wrote the run's config; now nobody listens where the client dials
    address = f"127.0.0.1:{free_port()}"
    client = _client(tmp_path, address, "--server-name", "localhost", "--give-up", "2")
    output = client.communicate(timeout=120)[0]
    assert client.returncode == 1, output
    lines = output.splitlines()
    retry = re.compile(
        rf"fedcore client client-0: server {re.escape(address)} unavailable \(Connection "
        r"refused\); retrying in \d+\.\d s"
    )
    assert any(retry.fullmatch(line) for line in lines), output
    assert re.fullmatch(
        rf"fedcore client client-0: gave up: the server at {re.escape(address)} was "
        r"unreachable for \d+ s \(Connection refused\); --give-up sets how long to try",
        lines[-1],
    ), output
