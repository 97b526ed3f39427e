"""The API process never imports torch: not at import, not while serving any route."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent("""
    import json, sys
    from fastapi.testclient import TestClient
    from spartan_service.jobs.settings import Settings
    from spartan_service.service.main import create_app
    from tests.service.factories import CONTRACT_SPEC, dataset_npz, profile

    after_import = "torch" in sys.modules
    app = create_app(Settings(data_dir=sys.argv[1], database_url=None, broker_url=None,
                              api_tokens=None))
    codes = []
    with TestClient(app) as client:
        codes.append(client.post("/v1/jobs", json=CONTRACT_SPEC).status_code)
        codes.append(client.post("/v1/uploads", files={"file": ("d.npz", dataset_npz())}
                                 ).status_code)
        codes.append(client.post("/v1/cost-models", json={"profile": profile()}).status_code)
        for path in ("/v1/jobs", "/v1/uploads", "/v1/cost-models", "/readyz", "/openapi.json",
                     "/"):
            codes.append(client.get(path).status_code)
    print(json.dumps({"after_import": after_import, "after_requests": "torch" in sys.modules,
                      "codes": codes}))
""")


def test_api_process_does_not_import_torch(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=REPO, capture_output=True,
        text=True, timeout=120, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["codes"] == [202, 201, 201, 200, 200, 200, 200, 200, 200]
    assert out["after_import"] is False
    assert out["after_requests"] is False
