"""Checks the Kubernetes manifests under deploy/kubernetes/ against Kubernetes' own schemas.

Built-in kinds (Deployment, CronJob) are validated whole, strictly (unknown fields refused), with
the schemas the kubernetes-validate package bundles. An MPIJob (a custom resource) has its launcher
and worker pod templates validated as PodTemplates, and its own fields checked against the MPI
Operator's v2beta1 rules that matter here: a launcher of one replica that runs mpirun with one
rank per worker slot, and `adrank train --distributed`.

With `--adrank PATH`, every adrank command line in the manifests is also parsed by that adrank
executable (`… --help`), so a renamed flag cannot hide in a manifest.

Usage: validate.py [--adrank PATH] FILE... (exit status 1 on the first problem, with the reason).
"""

import subprocess
import sys

import kubernetes_validate
import yaml

VERSION = kubernetes_validate.latest_version()


def check(ok, what):
    if not ok:
        raise ValueError(what)


def validate_mpijob(job):
    check(job.get("apiVersion") == "kubeflow.org/v2beta1", "an MPIJob must be kubeflow.org/v2beta1")
    spec = job["spec"]
    check(set(spec) <= {"slotsPerWorker", "runPolicy", "mpiReplicaSpecs", "sshAuthMountPath", "launcherCreationPolicy", "mpiImplementation"},
          f"unknown MPIJob spec fields: {sorted(set(spec))}")
    slots = spec.get("slotsPerWorker", 1)
    check(isinstance(slots, int) and slots >= 1, "slotsPerWorker must be a positive integer")
    policy = spec.get("runPolicy", {}).get("cleanPodPolicy", "None")
    check(policy in ("None", "Running", "All"), f"cleanPodPolicy {policy!r} is not None, Running or All")
    replicas = spec["mpiReplicaSpecs"]
    check(set(replicas) == {"Launcher", "Worker"}, "mpiReplicaSpecs must hold Launcher and Worker")
    check(replicas["Launcher"].get("replicas", 1) == 1, "an MPIJob has one launcher")
    for role, replica in replicas.items():
        template = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": f"{role.lower()}"},
                    "template": replica["template"]}
        kubernetes_validate.validate(template, VERSION, strict=True)
    launcher = replicas["Launcher"]["template"]["spec"]["containers"][0]
    command = launcher.get("command", []) + launcher.get("args", [])
    check(command[:1] == ["mpirun"], "the launcher runs mpirun")
    ranks = int(command[command.index("-np") + 1])
    workers = replicas["Worker"].get("replicas", 1)
    check(ranks == workers * slots, f"mpirun -np {ranks}, but {workers} workers x {slots} slots")
    check("adrank" in command and "--distributed" in command, "the launcher runs adrank train --distributed")


def adrank_command_lines(doc):
    """The adrank arguments of every container running the adrank image."""
    if doc.get("kind") == "MPIJob":
        launcher = doc["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"][0]
        command = launcher.get("command", []) + launcher.get("args", [])
        return [command[command.index("adrank") + 1:]]
    spec = doc["spec"]
    pod = spec["jobTemplate"]["spec"]["template"]["spec"] if doc["kind"] == "CronJob" else spec["template"]["spec"]
    return [c.get("args", []) for c in pod["containers"] if c["image"].startswith("adrank")]


def parses(adrank, args):
    # The config file is the cluster's; the command line alone is checked.
    if args[:1] == ["--config"]:
        args = args[2:]
    result = subprocess.run([adrank, *args, "--help"], capture_output=True, text=True)
    check(result.returncode == 0, f"`adrank {' '.join(args)}` does not parse: {result.stderr.strip()}")


def main(argv):
    adrank = None
    if argv[:1] == ["--adrank"]:
        adrank, argv = argv[1], argv[2:]
    for path in argv:
        with open(path) as f:
            for doc in yaml.safe_load_all(f):
                if doc is None:
                    continue
                try:
                    if doc.get("kind") == "MPIJob":
                        validate_mpijob(doc)
                    else:
                        kubernetes_validate.validate(doc, VERSION, strict=True)
                    if adrank:
                        for args in adrank_command_lines(doc):
                            parses(adrank, args)
                except Exception as e:  # every failure is reported the same way
                    print(f"{path}: {doc.get('kind')} {doc.get('metadata', {}).get('name')}: {e}", file=sys.stderr)
                    return 1
                print(f"{path}: {doc['kind']} {doc['metadata']['name']}: valid (Kubernetes {VERSION})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
