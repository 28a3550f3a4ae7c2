"""The P2P document's two terminals, word for word, run inside a network namespace of its own.

Run as ``unshare -n python terminals.py OUT.json``: the document's fixed ports (5555, 5556) are
then this run's alone, whatever else runs on the machine. The seed starts first; the second
terminal starts only once the seed has finished its rounds and says it waits for a joiner (the
order a person typing the commands gets). Prints what each terminal printed, and exit codes.
"""

import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
FOLDER = HERE.parents[1] / "examples" / "p2p"
FIRST = ["quadratic.py", "-u", "seed", "-r", "10"]
SECOND = ["quadratic.py", "-b", "tcp://*:5556", "-a", "tcp://localhost:5556", "-s", "seed",
          "-d", "tcp://localhost:5555", "-r", "10"]


def main(out: Path) -> None:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    err1 = out.with_suffix(".seed.err")
    with open(err1, "w") as err:
        first = subprocess.Popen([sys.executable, *FIRST], cwd=FOLDER, stdout=subprocess.PIPE,
                                 stderr=err, text=True)
        deadline = time.monotonic() + 120
        while "waiting up to" not in err1.read_text():  # the seed is alone, its rounds done
            if first.poll() is not None or time.monotonic() > deadline:
                first.kill()
                raise SystemExit(f"the seed did not wait for a joiner:\n{err1.read_text()}")
            time.sleep(0.05)
        second = subprocess.run([sys.executable, *SECOND], cwd=FOLDER, capture_output=True,
                                text=True, timeout=180)
        out1, _ = first.communicate(timeout=120)
    out.write_text(json.dumps({
        "first": {"rc": first.returncode, "stdout": out1, "stderr": err1.read_text()},
        "second": {"rc": second.returncode, "stdout": second.stdout, "stderr": second.stderr},
    }))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
