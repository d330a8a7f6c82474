#!/usr/bin/env bash
# The Secrets of the team recipe (deploy/team, docs/kubernetes.md), with fresh random passwords,
# written as manifests to stdout:
#   deploy/team/secrets.sh | kubectl apply -f -
# Once per cluster: PostgreSQL keeps the password of its first start in its volume, so new ones
# would lock the server out. kubectl renders them (--dry-run=client): nothing is sent here.
set -euo pipefail
namespace=${NAMESPACE:-mlpipe}
random() { python3 -c 'import secrets; print(secrets.token_hex(24))'; }
secret() {
  kubectl create secret generic "$@" --namespace "$namespace" --dry-run=client -o yaml
  echo ---
}

pg=$(random)
admin=$(random)
secret mlpipe-postgres --from-literal=username=mlflow --from-literal=password="$pg"
secret mlpipe-minio --from-literal=access-key-id=mlpipe --from-literal=secret-access-key="$(random)"
secret mlpipe-mlflow --from-literal=backend-store-uri="postgresql://mlflow:$pg@postgres:5432/mlflow" \
  --from-literal=flask-secret-key="$(random)"
# MLflow's auth config, as mlpipe/team/server.py writes it for `make team-server`, with its user
# store in PostgreSQL; the admin is created from it on the first start.
reader=$(random)
secret mlpipe-mlflow-auth --from-literal=admin-password="$admin" --from-literal=reader-password="$reader" \
  --from-literal=basic_auth.ini="[mlflow]
default_permission = READ
database_uri = postgresql://mlflow:$pg@postgres:5432/mlflow_auth
admin_username = admin
admin_password = $admin
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
auth_cache_ttl_seconds = 60
"
# The login of the steps' Jobs (deploy/kubernetes): the admin's, until you replace it with a
# user of their own (docs/kubernetes.md).
secret mlpipe-tracking-login --from-literal=username=admin --from-literal=password="$admin"
# The model server's: the team's READ-only identity (team.reader.user), which `python -m mlpipe.team
# setup` creates with this password (docs/kubernetes.md): READ on every experiment and model, EDIT
# on its own experiment only, so code that ran in the server could change nothing.
secret mlpipe-reader-login --from-literal=username=reader --from-literal=password="$reader"
# The loop's CronJob (deploy/team/loop.yaml): it registers versions and moves aliases. The admin's
# login until you make it a user of its own with EDIT on the model (docs/kubernetes.md).
secret mlpipe-loop-login --from-literal=username=admin --from-literal=password="$admin"
# The model server's: the key of its feedback tokens (serve.feedback.secret_file), and the public
# key of the gate whose signed verdicts it serves (trust.signers, docs/quality.md): GATE_PUBLIC_KEY,
# as `python -m mlpipe.registry.keys show` prints it, else the .pub beside ~/.mlpipe/gate.key.
# Never the private key: the server only checks signatures.
gate_public=${GATE_PUBLIC_KEY:-$(cut -d' ' -f1 "${GATE_PUBLIC_KEY_FILE:-$HOME/.mlpipe/gate.key.pub}" 2>/dev/null || true)}
if [[ $gate_public != ed25519:* ]]; then
  echo "secrets.sh: no gate public key: set GATE_PUBLIC_KEY=ed25519:... (python -m mlpipe.registry.keys show" \
       "prints the gate's) or GATE_PUBLIC_KEY_FILE" >&2
  exit 1
fi
secret mlpipe-serving --from-literal=feedback.secret="$(random)$(random)" --from-literal=gate.key.pub="$gate_public"
