"""The `spartan` command without a running service: argument checks, serve's refusal, fit."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from spartan_service.cli.main import build_parser, main
from spartan_service.cli.serve import WorkerPool, is_loopback
from tests.service.factories import profile


def test_serve_refuses_a_public_address_without_tokens(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SPARTAN_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("SPARTAN_API_TOKENS", raising=False)
    from spartan_service.jobs.settings import get_settings

    get_settings.cache_clear()
    try:
        assert main(["serve", "--host", "0.0.0.0", "--workers", "0"]) == 2
    finally:
        get_settings.cache_clear()
    assert "--insecure" in capsys.readouterr().err
    assert not (tmp_path / "spartan.db").exists()  # refused before touching anything


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("localhost", True), ("::1", True), ("127.0.0.2", True),
    ("0.0.0.0", False), ("::", False), ("192.168.1.5", False), ("example.com", False),
])
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_parser_reads_blocks_and_densities() -> None:
    args = build_parser().parse_args(
        ["profile", "--model", "mlp", "--block", "4x8", "--densities", "0.1,0.5,1", "-o", "p"])
    assert args.block == (4, 8) and args.densities == [0.1, 0.5, 1.0]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["profile", "--model", "mlp", "--block", "4by4", "-o", "p"])


def test_fit_writes_the_cost_model_and_plot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "profile.json"
    source.write_text(json.dumps(profile(layers=2)))
    out, plot = tmp_path / "model.json", tmp_path / "fit.png"
    assert main(["fit", str(source), "-o", str(out), "--plot", str(plot)]) == 0
    model = json.loads(out.read_text())
    assert set(model["layers"]) == {"fc1", "fc2"}
    assert model["layers"]["fc2"]["slope"] == pytest.approx(2e-5, rel=0.05)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "fc1:" in printed and "R^2" in printed


def test_fit_of_a_bad_profile_fails_naming_the_layer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prof = profile(layers=2)
    prof["layers"][1]["samples"][0]["latency"] = 0
    source = tmp_path / "profile.json"
    source.write_text(json.dumps(prof))
    assert main(["fit", str(source), "-o", str(tmp_path / "m.json")]) == 1
    assert "'fc2'" in capsys.readouterr().err
    assert not (tmp_path / "m.json").exists()


def test_client_commands_report_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text("{broken")
    assert main(["submit", str(spec), "--url", "http://127.0.0.1:1"]) == 1
    assert "not valid JSON" in capsys.readouterr().err
    spec.write_text("{}")
    assert main(["submit", str(spec), "--url", "http://127.0.0.1:1"]) == 1
    assert "cannot reach the API at http://127.0.0.1:1" in capsys.readouterr().err
    assert main(["status", "abc", "--url", "http://127.0.0.1:1"]) == 1


def test_profile_then_fit_a_small_mlp(tmp_path: Path) -> None:
    import torch

    torch.set_num_threads(1)
    prof, model = tmp_path / "profile.json", tmp_path / "model.json"
    assert main(["profile", "--model", "mlp", "--kwargs", '{"hidden": [32]}', "--quick",
                 "--batch", "8", "-o", str(prof)]) == 0
    layers = json.loads(prof.read_text())["layers"]
    assert [layer["name"] for layer in layers] == ["layers.0", "head"]
    assert layers[0]["shape"] == [32, 64]
    assert main(["fit", str(prof), "-o", str(model)]) == 0
    assert set(json.loads(model.read_text())["layers"]) == {"layers.0", "head"}


def test_structured_profile_then_fit(tmp_path: Path) -> None:
    import torch

    torch.set_num_threads(1)
    prof, model = tmp_path / "profile.json", tmp_path / "model.json"
    assert main(["profile", "--model", "mlp", "--kwargs", '{"hidden": [32]}', "--quick",
                 "--structure", "channels", "--batch", "8", "-o", str(prof)]) == 0
    data = json.loads(prof.read_text())
    assert data["structure"] == "channels"
    assert {(s["kept_in"], s["kept_out"]) for s in data["layers"][0]["samples"]} == {
        (64, 8), (64, 16), (64, 32)}  # the input stays, the hidden units shrink
    assert main(["fit", str(prof), "-o", str(model)]) == 0
    fitted = json.loads(model.read_text())
    assert {lay["structure"] for lay in fitted["layers"].values()} == {"channels"}


def test_profile_needs_a_known_input_shape(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["profile", "--model", "mlp", "--dataset", "upload", "-o",
                 str(tmp_path / "p.json")]) == 1
    assert "no known input shape" in capsys.readouterr().err


class HostileServer(ThreadingHTTPServer):
    """A server that names its artifacts with paths, as a compromised one could."""

    names = ["../escaped.txt", "/tmp/spartan-absolute.txt", "sub/dir.txt", "..", "ok.txt"]


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.path.endswith("/artifacts"):
            body = json.dumps({"data": [{"name": n, "size": 2} for n in HostileServer.names],
                               "count": len(HostileServer.names)}).encode()
        else:
            body = b"hi"
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_download_keeps_artifacts_inside_the_output_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = HostileServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    out = tmp_path / "a" / "out"
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        assert main(["download", "job1", "-o", str(out), "--url", url]) == 0
    finally:
        server.shutdown()
    assert [p.name for p in out.iterdir()] == ["ok.txt"]
    assert not (tmp_path / "a" / "escaped.txt").exists()
    assert not Path("/tmp/spartan-absolute.txt").exists()
    err = capsys.readouterr().err
    assert err.count("skipped:") == 4 and "not a plain file name" in err


def test_serve_refuses_a_short_token_on_a_public_address(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SPARTAN_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("SPARTAN_API_TOKENS", "team:x,other:0123456789abcdef")
    from spartan_service.jobs.settings import get_settings

    get_settings.cache_clear()
    try:
        assert main(["serve", "--host", "0.0.0.0", "--workers", "0"]) == 2
    finally:
        get_settings.cache_clear()
    err = capsys.readouterr().err
    assert "token of team is shorter than 16" in err and "other" not in err
    assert not (tmp_path / "spartan.db").exists()


def test_embedded_workers_do_not_import_from_the_current_directory(tmp_path: Path) -> None:
    # A module named like one the worker imports, in the directory `spartan serve` runs from.
    (tmp_path / "profile.py").write_text("raise SystemExit('imported from the cwd')\n")
    (tmp_path / "worker.py").write_text("raise SystemExit('imported from the cwd')\n")
    command = WorkerPool(1).command(0)
    check = [*command[:2], command[2].replace(
        "from spartan_service.worker.main import main; main(sys.argv[1:])",
        "import spartan_service.worker.main as m, cProfile; print(m.__file__)")]
    done = subprocess.run(check, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert str(tmp_path) not in done.stdout


def test_python_m_worker_ignores_modules_in_the_current_directory(tmp_path: Path) -> None:
    for name in ("jobs.py", "profile.py"):  # cProfile imports `profile`
        (tmp_path / name).write_text("raise SystemExit('shadowed by the cwd')\n")
    done = subprocess.run([sys.executable, "-m", "spartan_service.worker",
                           "--queues", "bogus"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert "shadowed" not in done.stderr + done.stdout
    assert done.returncode == 2 and "unknown queues bogus" in done.stderr


def test_spartan_worker_ignores_a_planted_worker_and_profile(tmp_path: Path) -> None:
    # The console entry puts its own folder, not the current one, first on the import path.
    for name in ("worker.py", "profile.py", "jobs.py"):
        (tmp_path / name).write_text("raise SystemExit('planted module imported')\n")
    spartan = Path(sys.executable).with_name("spartan")
    done = subprocess.run([str(spartan), "worker", "--queues", "bogus"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert "planted" not in done.stderr + done.stdout
    assert done.returncode == 1 and "unknown queues bogus" in done.stderr


def test_profile_submit_body_takes_any_job_dataset_and_the_task() -> None:
    from spartan_service.cli.cost_models import profile_body
    from spartan_service.cli.main import build_parser
    from spartan_service.jobs.profile_spec import ProfileSpec

    args = build_parser().parse_args([
        "profile", "--submit", "--model", "hf:/data/bert", "--dataset", "hf",
        "--data-kwargs", '{"path": "/data/reviews.parquet", "max_length": 32}',
        "--task", "classification", "--structure", "channels", "--name", "bert"])
    body = profile_body(args)
    assert body["data"] == {"dataset": "hf", "kwargs": {"path": "/data/reviews.parquet",
                                                        "max_length": 32}}
    assert body["task"] == "classification" and body["structure"] == "channels"
    ProfileSpec.model_validate(body)  # what the API will take
