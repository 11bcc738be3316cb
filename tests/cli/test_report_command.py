"""`canary report`: what it says when there is nothing to report, or nowhere to write it (no traceback)."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.cli.main import main
from tests.support.kmock_server import RunningEmulator
from tests.support.kube_world import KubeWorld

pytestmark = pytest.mark.timeout(60)


def test_no_kubeconfig_is_one_line_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "nowhere.yaml"
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert main(["report", "search-v2", "--kubeconfig", str(missing), "-o", str(tmp_path / "r.html")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("canary report: no Kubernetes API to talk to") and str(missing) in err, err
    assert "Traceback" not in err and not (tmp_path / "r.html").exists()


def test_no_kubeconfig_anywhere(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    monkeypatch.setenv("HOME", str(tmp_path))
    assert main(["report", "search-v2", "-o", str(tmp_path / "r.html")]) == 1
    assert "no Kubernetes API to talk to" in capsys.readouterr().err


def test_a_release_that_does_not_exist_is_exit_1(emulator: RunningEmulator, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    KubeWorld(emulator).seed_stack()
    assert main(["report", "nope", "-n", "search", "--server", emulator.url, "-o", str(tmp_path / "r.html")]) == 1
    assert "canary report: no StackRelease search/nope" in capsys.readouterr().err
    assert main(["report", "--workdir", str(tmp_path / "absent"), "-o", str(tmp_path / "r.html")]) == 1
    assert "no release in" in capsys.readouterr().err


def test_an_output_that_is_a_directory_is_refused_before_anything_is_read(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "--workdir", str(tmp_path / "absent"), "-o", str(tmp_path)]) == 2
    assert f"-o {tmp_path} is a directory" in capsys.readouterr().err
