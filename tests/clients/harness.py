"""The machinery of the released-client tests: judges saved to folders, `adajudge serve` processes on 127.0.0.1,
one long-lived interpreter per released client (`driver.py`), and the rewards in-process scoring gives.

The clients' packages live in `.clients/<package>-<version>` (and their small import-time dependencies in
`.clients/deps`), installed by `make test-clients`, which sets ADAJUDGE_REQUIRE_CLIENTS=1: there a missing client
fails; elsewhere it is skipped.
"""

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import torch

from adajudge_hf.testing import free_port


ROOT = Path(__file__).resolve().parents[2]
CLIENTS_DIR = ROOT / ".clients"
DRIVER = Path(__file__).resolve().parent / "driver.py"
sys.path.insert(0, str(DRIVER.parent))
from driver import generated_ids  # noqa: E402  (the ids the stand-in engine generates: one definition)


@dataclass(frozen=True)
class Client:
    """A released reward client: its package on the index (None: slime's reproduction) and how it is driven."""

    name: str
    package: str | None
    version: str | None
    runner: str

    @property
    def folder(self) -> Path | None:
        return CLIENTS_DIR / f"{self.package}-{self.version}" if self.package else None


CLIENTS = {
    c.name: c
    for c in (
        Client("openrlhf-0.9.0", "openrlhf", "0.9.0", "openrlhf-batch"),
        Client("openrlhf-0.11.0", "openrlhf", "0.11.0", "openrlhf-agent"),
        Client("openrlhf-0.11.2", "openrlhf", "0.11.2", "openrlhf-agent"),
        Client("verl-0.9.1", "verl", "0.9.1", "verl"),
        Client("slime-reproduction", None, None, "slime"),
    )
}


class ClientProcess:
    """`driver.py` under one client's packages; `run(job)` sends a job and returns the per-sample results."""

    def __init__(self, client: Client, log_dir: Path):
        self.client = client
        paths = [str(client.folder), str(CLIENTS_DIR / "deps")] if client.folder else []
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "ADAJUDGE_CLIENT_PACKAGE": client.package or ""}
        self.log = log_dir / f"{client.name}.log"
        # Jobs go through a pipe of their own: stdin stays empty, so nothing a client library prompts for (such as
        # transformers' trust_remote_code question) can read a job or wait for an answer.
        jobs_read, jobs_write = os.pipe()
        env["ADAJUDGE_JOBS_FD"] = str(jobs_read)
        self.process = subprocess.Popen(
            [sys.executable, str(DRIVER)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self.log.open("w"),
            text=True,
            cwd=log_dir,
            pass_fds=(jobs_read,),
        )
        os.close(jobs_read)
        self.jobs = os.fdopen(jobs_write, "w")
        self.answers: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        ready = self._answer(timeout=300)
        if client.package and (ready.get("package"), ready.get("version")) != (client.package, client.version):
            raise AssertionError(f"{client.name}: the driver imported {ready} instead")

    def _read(self):
        for line in self.process.stdout:
            self.answers.put(json.loads(line))
        self.answers.put(None)

    def _answer(self, timeout: float) -> dict:
        try:
            answer = self.answers.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"{self.client.name}: no answer within {timeout} s; log:\n{self.tail()}") from None
        if answer is None:
            raise AssertionError(f"{self.client.name}: the driver exited; log:\n{self.tail()}")
        return answer

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def run(self, job: dict, timeout: float = 300) -> list[dict]:
        self.jobs.write(json.dumps({"runner": self.client.runner, **job}) + "\n")
        self.jobs.flush()
        answer = self._answer(timeout)
        if "crash" in answer:
            raise AssertionError(f"{self.client.name} crashed in the driver:\n{answer['crash']}")
        return answer["samples"]

    def close(self):
        self.jobs.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def client_process(client: Client, log_dir: Path) -> ClientProcess:
    if client.folder is not None and not client.folder.is_dir():
        message = f"{client.name} is not installed in {client.folder}: run `make test-clients`"
        if os.environ.get("ADAJUDGE_REQUIRE_CLIENTS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return ClientProcess(client, log_dir)


class Server:
    """`adajudge serve JUDGE --host 127.0.0.1 --port P FLAGS` in a subprocess, healthy on return."""

    def __init__(self, judge: Path, *flags: str, log: Path, port: int | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        # fp32: the rewards are compared with in-process fp32 scoring (`--dtype auto` picks bf16 on bf16 hardware)
        command = [
            sys.executable,
            "-m",
            "adajudge_hf.cli",
            "serve",
            str(judge),
            "--host",
            "127.0.0.1",
            "--dtype",
            "float32",
        ]
        self.process = subprocess.Popen(
            [*command, "--port", str(self.port), *flags],
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 300
        while True:
            assert self.process.poll() is None, f"`adajudge serve {' '.join(flags)}` exited:\n{self.tail()}"
            try:
                if httpx.get(f"{self.url}/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"the server was not healthy within 300 s:\n{self.tail()}"
            time.sleep(0.2)

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def metrics(self) -> str:
        return httpx.get(f"{self.url}/metrics", timeout=30).text

    def metrics_with_key(self, key: str) -> str:
        return httpx.get(f"{self.url}/metrics", headers={"Authorization": f"Bearer {key}"}, timeout=30).text

    def paused(self, seconds: float) -> threading.Timer:
        """Stop the process now (it accepts connections but answers nothing) and let it go on after `seconds`."""
        self.process.send_signal(signal.SIGSTOP)
        timer = threading.Timer(seconds, self.process.send_signal, args=(signal.SIGCONT,))
        timer.start()
        return timer

    def stop(self):
        self.process.send_signal(signal.SIGCONT)
        self.process.terminate()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class LateRelay:
    """A port that refuses connections (a server that is down) until `opens_after` s, then relays to `target`."""

    def __init__(self, target_port: int, opens_after: float):
        self.port, self.target_port = free_port(), target_port
        self.url = f"http://127.0.0.1:{self.port}"
        self.closed = threading.Event()
        self.listener: socket.socket | None = None
        self.timer = threading.Timer(opens_after, self._open)
        self.timer.start()

    def _open(self):
        self.listener = socket.create_server(("127.0.0.1", self.port))
        self.listener.settimeout(0.2)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.closed.is_set():
            try:
                incoming, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:  # closed
                return
            outgoing = socket.create_connection(("127.0.0.1", self.target_port))
            for source, sink in ((incoming, outgoing), (outgoing, incoming)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket):
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        self.timer.cancel()
        self.closed.set()
        if self.listener is not None:
            self.listener.close()


def expected_rewards(
    judge, judge_tokenizer, policy_tokenizer, samples: list[dict], max_new_tokens: int
) -> torch.Tensor:
    """The judge's reward of each conversation the client's rollout holds, by in-process scoring: the prompt's
    messages and the response as generated (cut at `max_new_tokens` when it did not end)."""
    from adajudge_hf.evaluation.scoring import score_responses

    prompts, responses = [], []
    for sample in samples:
        ids, _ = generated_ids(policy_tokenizer, sample["response"], max_new_tokens)
        if ids[-1] == policy_tokenizer.eos_token_id:
            ids = ids[:-1]
        prompts.append(sample.get("scored_messages", sample["messages"]))
        responses.append([{"role": "assistant", "content": policy_tokenizer.decode(ids)}])
    return score_responses(judge, judge_tokenizer, prompts, responses, show_progress=False).rewards


def rewards_of(results: list[dict]) -> list:
    """One float per sample (OpenRLHF hands back one-element lists), None where the client got no reward."""
    rewards = []
    for result in results:
        reward = result.get("reward")
        if isinstance(reward, list):
            assert len(reward) == 1, result
            reward = reward[0]
        rewards.append(reward)
    return rewards


def assert_rewards_equal(results: list[dict], expected: torch.Tensor, client: ClientProcess) -> None:
    """Every sample has its reward, in order, equal to in-process scoring: within 1e-5 of the batch's reward scale
    (fp32; the server packs a prompt group into one row, which sums in another order, and a reward that is a small
    difference of large terms keeps that rounding at the terms' scale)."""
    rewards = rewards_of(results)
    missing = [(i, r.get("error")) for i, r in enumerate(results) if rewards[i] is None]
    assert not missing, f"{client.client.name}: no reward for samples {missing}; client log:\n{client.tail()}"
    scale = max(expected.abs().max().item(), 1.0)
    torch.testing.assert_close(
        torch.tensor(rewards, dtype=torch.float64), expected.double(), rtol=1e-5, atol=1e-5 * scale
    )
