"""Workers on a Kubernetes cluster, as manifests (``distrib up k8s --print``): a Secret with
the workers' key and a Deployment whose pods each run a worker that dials the Main's address.
Nothing here talks to a cluster: the user applies the manifests (``kubectl apply -f -``).

The pods share one worker key, which the Main authorizes once; they serve that Main only
(``--connect`` with its key), so the pod is their sandbox (``--no-sandbox``: an unprivileged
pod has no user namespaces for bubblewrap).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence

from distrib.wire._keys import KeyPair

KEY_DIR = "/etc/distrib"  # where the Secret is mounted in each pod


def _q(text: str) -> str:
    """A YAML scalar for ``text`` (a JSON string is one)."""
    return json.dumps(text)


def secret_file(pair: KeyPair) -> str:
    """The worker's secret key file, as ``distrib keygen`` writes it."""
    return ("# distrib secret key: keep it private\n"
            f"public = {pair.public}\nsecret = {pair.secret}\n")


def manifests(name: str, namespace: str, image: str, replicas: int, threads: int | None,
              main: str, main_key: str, worker: KeyPair, worker_args: Sequence[str] = ()
              ) -> str:
    """The Secret and the Deployment, as one YAML stream."""
    key_file = base64.b64encode(secret_file(worker).encode()).decode()
    given = [main, main_key, *(["--threads", str(threads)] if threads else []), *worker_args]
    # (Kubernetes reads $(NAME) in a command as a variable and $$ as $: keys hold $)
    main, main_key, *more = (arg.replace("$", "$$") for arg in given)
    command = ["distrib", "worker", "--key", f"{KEY_DIR}/worker.key", "--connect", main,
               "--main-key", main_key, "--no-sandbox", "--name", "$(POD_NAME)", *more]
    labels = f"      app.kubernetes.io/name: {_q(name)}\n"
    return (
        "apiVersion: v1\n"
        "kind: Secret\n"
        "metadata:\n"
        f"  name: {_q(name + '-key')}\n"
        f"  namespace: {_q(namespace)}\n"
        "type: Opaque\n"
        "data:\n"
        f"  worker.key: {_q(key_file)}\n"
        "---\n"
        "apiVersion: apps/v1\n"
        "kind: Deployment\n"
        "metadata:\n"
        f"  name: {_q(name)}\n"
        f"  namespace: {_q(namespace)}\n"
        "spec:\n"
        f"  replicas: {replicas}\n"
        "  selector:\n"
        "    matchLabels:\n"
        + labels.replace("      ", "      ", 1) +
        "  template:\n"
        "    metadata:\n"
        "      labels:\n"
        + labels.replace("      ", "        ", 1) +
        "    spec:\n"
        "      containers:\n"
        "        - name: worker\n"
        f"          image: {_q(image)}\n"
        f"          command: [{', '.join(_q(c) for c in command)}]\n"
        "          env:\n"
        "            - name: POD_NAME\n"
        "              valueFrom:\n"
        "                fieldRef:\n"
        "                  fieldPath: metadata.name\n"
        "          volumeMounts:\n"
        "            - name: key\n"
        f"              mountPath: {_q(KEY_DIR)}\n"
        "              readOnly: true\n"
        "      volumes:\n"
        "        - name: key\n"
        "          secret:\n"
        f"            secretName: {_q(name + '-key')}\n"
        "            defaultMode: 0400\n"  # (a worker refuses a key others can read)
    )
