#!/usr/bin/env python3
"""Checks on `helm template` output that a schema cannot make: least-privilege RBAC and a
locked-down operator container. Usage: check_rendered.py RENDERED.yaml RELEASE_NAMESPACE
[WATCHED_NAMESPACE ...]. Exits 1 with every failed check listed."""
import sys

import yaml

# Exactly what the operator needs, per (apiGroup, resource): the verbs.
MANAGER_RULES = {
    ("", "pods"): {"get", "list", "watch", "create", "delete", "patch"},
    ("", "pods/eviction"): {"create"},
    ("", "persistentvolumeclaims"): {"get", "list", "watch", "create", "delete", "patch"},
    ("", "services"): {"get", "list", "watch", "create", "patch", "delete"},
    ("policy", "poddisruptionbudgets"): {"get", "list", "watch", "create", "patch", "delete"},
    ("", "events"): {"create", "patch"},
    ("events.k8s.io", "events"): {"create", "patch"},
    ("raft-operator.dev", "raftclusters"): {"get", "list", "watch", "patch", "update"},
    ("raft-operator.dev", "raftclusters/status"): {"get", "patch", "update"},
    ("raft-operator.dev", "raftclusters/finalizers"): {"update"},
    ("raft-operator.dev", "raftrecoveries"): {"get", "list", "watch", "patch", "update"},
    ("raft-operator.dev", "raftrecoveries/status"): {"get", "patch", "update"},
}
NODE_RULES = {("", "nodes"): {"get", "list", "watch"}}
LEASE_RULES = {("coordination.k8s.io", "leases"): {"get", "list", "watch", "create", "update", "patch"}}

failures = []


def check(condition, message):
    if not condition:
        failures.append(message)


def granted(role):
    """(apiGroup, resource) -> verbs granted by a Role or ClusterRole."""
    grants = {}
    for rule in role.get("rules") or []:
        for field in ("apiGroups", "resources", "verbs"):
            check("*" not in (rule.get(field) or []),
                  f"{role['kind']} {role['metadata']['name']}: wildcard in {field}")
        check("nonResourceURLs" not in rule, f"{role['metadata']['name']}: nonResourceURLs granted")
        for group in rule.get("apiGroups") or []:
            for resource in rule.get("resources") or []:
                grants.setdefault((group, resource), set()).update(rule.get("verbs") or [])
    return grants


def expect_grants(role, expected):
    actual = granted(role)
    where = f"{role['kind']} {role['metadata'].get('namespace', '')}/{role['metadata']['name']}"
    for key in sorted(set(actual) | set(expected)):
        extra = actual.get(key, set()) - expected.get(key, set())
        missing = expected.get(key, set()) - actual.get(key, set())
        resource = f"{key[0] or 'core'}/{key[1]}"
        check(not extra, f"{where}: grants more than needed on {resource}: {sorted(extra)}")
        check(not missing, f"{where}: lacks verbs the operator uses on {resource}: {sorted(missing)}")


def main():
    path, release_ns, watched = sys.argv[1], sys.argv[2], sys.argv[3:]
    with open(path) as handle:
        docs = [d for d in yaml.safe_load_all(handle) if d]
    by_kind = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], []).append(doc)

    cluster_roles = {r["metadata"]["name"].rsplit("-", 1)[-1]: r for r in by_kind.get("ClusterRole", [])}
    roles = by_kind.get("Role", [])
    check(set(cluster_roles) == ({"nodes"} if watched else {"nodes", "manager"}),
          f"ClusterRoles {sorted(cluster_roles)}: expected nodes{'' if watched else ' and manager'} only")
    if "nodes" in cluster_roles:
        expect_grants(cluster_roles["nodes"], NODE_RULES)
    if not watched and "manager" in cluster_roles:
        expect_grants(cluster_roles["manager"], MANAGER_RULES)
    manager_roles = {r["metadata"]["namespace"]: r for r in roles if r["metadata"]["name"].endswith("-manager")}
    check(set(manager_roles) == set(watched),
          f"manager Roles in {sorted(manager_roles)}, expected in {sorted(watched)}")
    for role in manager_roles.values():
        expect_grants(role, MANAGER_RULES)
    lease_roles = [r for r in roles if r["metadata"]["name"].endswith("-leader-election")]
    check(len(lease_roles) == 1, f"{len(lease_roles)} leader-election Roles, expected 1")
    for role in lease_roles:
        check(role["metadata"]["namespace"] == release_ns,
              f"leader-election Role in {role['metadata']['namespace']}, expected {release_ns}")
        expect_grants(role, LEASE_RULES)
        for rule in role["rules"]:
            mutating = {"get", "update", "patch"} & set(rule["verbs"])
            check(not mutating or rule.get("resourceNames"),
                  f"leader-election Role: {sorted(mutating)} not limited to the operator's Lease")
    bindings = by_kind.get("RoleBinding", []) + by_kind.get("ClusterRoleBinding", [])
    check(len(bindings) == len(roles) + len(cluster_roles),
          f"{len(bindings)} bindings for {len(roles) + len(cluster_roles)} roles")

    deployments = by_kind.get("Deployment", [])
    check(len(deployments) == 1, f"{len(deployments)} Deployments, expected 1")
    for deployment in deployments:
        pod = deployment["spec"]["template"]["spec"]
        check(pod["securityContext"].get("runAsNonRoot") is True, "pod: runAsNonRoot is not true")
        check(pod["securityContext"].get("seccompProfile", {}).get("type") == "RuntimeDefault",
              "pod: seccompProfile is not RuntimeDefault")
        (container,) = pod["containers"]
        security = container["securityContext"]
        check(security.get("readOnlyRootFilesystem") is True, "container: root filesystem is writable")
        check(security.get("allowPrivilegeEscalation") is False, "container: privilege escalation allowed")
        check(security.get("capabilities", {}).get("drop") == ["ALL"], "container: capabilities not dropped")
        check(container.get("resources", {}).get("limits", {}).get("memory"), "container: no memory limit")
        check(container["livenessProbe"]["httpGet"]["path"] == "/healthz", "liveness probe is not /healthz")
        check(container["readinessProbe"]["httpGet"]["path"] == "/readyz", "readiness probe is not /readyz")
        args = container["args"]
        replicas = deployment["spec"]["replicas"]
        if replicas > 1:
            check("--leader-elect" in args, f"{replicas} replicas without --leader-elect")
        if watched:
            check(f"--watch-namespaces={','.join(watched)}" in args, f"args {args}: watched namespaces missing")
        else:
            check(not any(a.startswith("--watch-namespaces") for a in args), "watching a subset by default")

    if failures:
        print(f"check_rendered: {path}: {len(failures)} failed check(s):", file=sys.stderr)
        for failure in failures:
            print(f"  - {failure}", file=sys.stderr)
        sys.exit(1)
    print(f"check_rendered: {path}: RBAC and pod security as expected "
          f"({len(docs)} objects, {'namespaces ' + ','.join(watched) if watched else 'all namespaces'})")


if __name__ == "__main__":
    main()
