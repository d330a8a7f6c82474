"""A throwaway PostgreSQL database on this machine's Debian cluster (`15 main`): started when it
is down (as root: `pg_ctlcluster 15 main start`), a role and a database per test module, dropped
afterwards. Where there is no cluster, `available()` says why, for a visible skip."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess

CLUSTER = ("15", "main")


def available() -> str | None:
    """None when a cluster can be used, else the reason it cannot."""
    if shutil.which("pg_ctlcluster") is None or shutil.which("psql") is None:
        return "no PostgreSQL here (Debian's postgresql-15: pg_ctlcluster and psql)"
    if os.geteuid() != 0:
        return "starting the PostgreSQL cluster needs root (pg_ctlcluster 15 main start)"
    listed = subprocess.run(["pg_lsclusters", "--no-header"], capture_output=True, text=True)
    if " ".join(CLUSTER) not in " ".join(listed.stdout.split()):
        return f"no PostgreSQL cluster {' '.join(CLUSTER)} (pg_lsclusters: {listed.stdout.strip() or 'none'})"
    return None


def _psql(sql: str) -> None:
    subprocess.run(["su", "postgres", "-c", f"psql -v ON_ERROR_STOP=1 -q -c \"{sql}\""], check=True,
                   capture_output=True, text=True, timeout=60)


class Database:
    """`url` is a postgresql:// URL for SQLAlchemy (psycopg 3) over TCP on 127.0.0.1."""

    def __init__(self, name: str):
        subprocess.run(["pg_ctlcluster", *CLUSTER, "start"], capture_output=True, text=True, timeout=120)
        status = subprocess.run(["pg_lsclusters", "--no-header"], capture_output=True, text=True).stdout
        assert "online" in status, f"the PostgreSQL cluster did not start: {status}"
        self.name, self.role, self.password = name, f"{name}_user", secrets.token_hex(12)
        self.port = int(status.split()[2])
        _psql(f"DROP DATABASE IF EXISTS {self.name}")
        _psql(f"DROP ROLE IF EXISTS {self.role}")
        _psql(f"CREATE ROLE {self.role} LOGIN PASSWORD '{self.password}'")
        _psql(f"CREATE DATABASE {self.name} OWNER {self.role}")
        self.url = f"postgresql://{self.role}:{self.password}@127.0.0.1:{self.port}/{self.name}"

    def query(self, sql: str) -> list[tuple]:
        import psycopg

        with psycopg.connect(self.url) as conn, conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchall()

    def drop(self) -> None:
        _psql(f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)")
        _psql(f"DROP ROLE IF EXISTS {self.role}")


def skip_without_cluster():
    """`pytestmark` for a module that needs the cluster: skipped, with the reason, without one."""
    import pytest

    reason = available()
    return pytest.mark.skipif(reason is not None, reason=reason or "")


def module_database(name: str):
    """A module-scoped fixture `database`: a throwaway database `name`, dropped afterwards."""
    import pytest

    @pytest.fixture(scope="module")
    def database():
        db = Database(name)
        yield db
        db.drop()

    return database
