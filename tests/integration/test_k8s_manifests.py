"""`distrib up k8s --print`: the manifests parse as Kubernetes reads them, and the command a
pod runs, with the key the Secret holds, is a worker that dials the Main and serves it."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
from pathlib import Path

import yaml

from distrib.wire import _keys
from tests.helpers import PYTHON, Workspace, ended, finish, wait_for
from tests.integration.test_dial import free_port, main_env, popen

SCRIPT = """
    import distrib
    from distrib import distributed

    @distributed
    def square(x):
        return x * x

    if __name__ == "__main__":
        print("SQUARES", distrib.gather([square(x) for x in range(8)], timeout=120))
    """


def _manifests(tmp_path: Path, port: int, main_key: str, authorized: Path) -> list[dict]:
    out = subprocess.run(
        [PYTHON, "-m", "distrib", "up", "k8s", "--print", "--main", f"127.0.0.1:{port}",
         "--main-key", main_key, "--image", "registry.example/lab/distrib:1", "--replicas", "2",
         "--threads", "1", "--name", "lab-workers", "--authorize", str(authorized)],
        capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert f"added the workers' key to {authorized}" in out.stderr
    docs = list(yaml.safe_load_all(out.stdout))
    if shutil.which("kubectl"):  # (offline: kustomize reads and checks them, as apply would)
        folder = tmp_path / "kustomize"
        folder.mkdir()
        (folder / "workers.yaml").write_text(out.stdout)
        (folder / "kustomization.yaml").write_text("resources:\n- workers.yaml\n")
        checked = subprocess.run(["kubectl", "kustomize", str(folder)], capture_output=True,
                                 text=True, timeout=60)
        assert checked.returncode == 0, checked.stderr
    return docs


def test_the_pods_command_with_the_secrets_key_is_a_worker_that_serves_the_main(
        workspace: Workspace, tmp_path: Path) -> None:
    port = free_port()
    env, main = main_env(tmp_path, port, [])
    authorized = Path(env["DISTRIB_AUTHORIZED_WORKERS"])
    secret, deployment = _manifests(tmp_path, port, main.public, authorized)
    assert (secret["kind"], deployment["kind"]) == ("Secret", "Deployment")
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]["spec"]
    volume = pod["volumes"][0]["secret"]
    assert volume["secretName"] == secret["metadata"]["name"] and volume["defaultMode"] == 0o400
    (container,) = pod["containers"]
    assert container["image"] == "registry.example/lab/distrib:1"
    # The key the Secret holds is the one the Main now authorizes, and readable by its owner
    # alone where it is mounted (a worker refuses a key file others can read).
    key_file = tmp_path / "etc" / "worker.key"
    key_file.parent.mkdir()
    key_file.write_bytes(base64.b64decode(secret["data"]["worker.key"]))
    key_file.chmod(0o400)
    public = _keys.load_secret(key_file).public
    assert authorized.read_text().split() == [public, "k8s:default/lab-workers"]
    # The pod's command, as Kubernetes expands it ($(POD_NAME), and $$ for a $ of a key).
    mount = container["volumeMounts"][0]["mountPath"]
    command = [arg.replace("$(POD_NAME)", "lab-workers-0").replace("$$", "$")
               .replace(f"{mount}/", f"{key_file.parent}/") for arg in container["command"]]
    assert command[:2] == ["distrib", "worker"] and "--main-key" in command
    cache = tmp_path / "worker-cache"
    worker = subprocess.Popen(
        [PYTHON, "-m", "distrib", *command[1:], "--listen", "127.0.0.1:0",
         "--cache-dir", str(cache)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "DISTRIB_CACHE_DIR": str(cache)})
    with ended(worker):
        assert worker.stdout is not None
        ready = worker.stdout.readline()
        assert "lab-workers-0" in ready and "dialling" in ready, ready
        workspace.write("main.py", SCRIPT)
        with ended(popen(workspace, "main.py", env)) as proc:
            out, _ = finish(proc)
        assert f"SQUARES {[x * x for x in range(8)]}" in out
        worker.terminate()
        wait_for(lambda: worker.poll() is not None, 30, "the worker to stop")


def test_up_k8s_without_print_says_to_print_and_apply(tmp_path: Path) -> None:
    out = subprocess.run([PYTHON, "-m", "distrib", "up", "k8s", "--main", "10.0.0.1:7788",
                          "--main-key", _keys.generate().public, "--image", "i"],
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 2 and "add --print" in out.stderr
    bad = subprocess.run([PYTHON, "-m", "distrib", "up", "k8s", "--print", "--main",
                          "10.0.0.1:7788", "--main-key", "not-a-key", "--image", "i"],
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert bad.returncode == 2 and "is not a public key" in bad.stderr


