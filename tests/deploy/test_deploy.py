"""The deployment files agree with the image and with SPEC.

Parses deploy/k8s/*.yaml, deploy/ecs/task-definition.json, the Dockerfile, the scripts that
know the regions and the workflows, and checks the baked region set (the Dockerfile's REGIONS
default: the 10 regions upstream releases), ports, user, health command, grace period and the
task definition embedded in docs/ecs-deployment.md.
Run: python3 -m unittest discover -s tests/deploy   (needs PyYAML)
"""

import json
import os
import re
import unittest

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# SPEC's table, in order: a region's port is 8001 + its row, whichever regions an image holds.
TABLE = ["us-east-1", "us-west-2", "eu-west-1", "ap-southeast-1", "ap-southeast-2", "ap-northeast-1",
         "ap-south-1", "ca-central-1", "sa-east-1", "us-gov-west-1", "us-gov-east-1", "us-west-1"]
GOVCLOUD = ["us-gov-west-1", "us-gov-east-1"]
# What upstream releases, so what the image holds by default: the table less GovCloud.
REGIONS = [r for r in TABLE if r not in GOVCLOUD]
PORTS = {r: 8001 + TABLE.index(r) for r in REGIONS}
UID = 65532
SHUTDOWN_GRACE_S = 4  # SUPERVISOR_SHUTDOWN_GRACE's default, and what the manifests set


def read(path):
    with open(os.path.join(ROOT, path)) as f:
        return f.read()


def docs(path):
    return list(yaml.safe_load_all(read(path)))


class Kubernetes(unittest.TestCase):
    def setUp(self):
        (self.deploy,) = docs("deploy/k8s/deployment.yaml")
        (self.service,) = docs("deploy/k8s/service.yaml")
        self.pod = self.deploy["spec"]["template"]["spec"]
        (self.container,) = self.pod["containers"]

    def test_ports_match_spec(self):
        ports = {p["name"]: p["containerPort"] for p in self.container["ports"]}
        self.assertEqual(ports, {**PORTS, "metrics": 9090})
        service = {p["name"]: (p["port"], p["targetPort"]) for p in self.service["spec"]["ports"]}
        self.assertEqual(service, {**{r: (p, r) for r, p in PORTS.items()}, "metrics": (9090, "metrics")})
        self.assertEqual(self.service["spec"]["selector"], self.deploy["spec"]["selector"]["matchLabels"])
        for name in ports:
            self.assertLessEqual(len(name), 15, "Kubernetes port names are at most 15 characters")

    def test_security_context(self):
        pod, c = self.pod["securityContext"], self.container["securityContext"]
        self.assertTrue(pod["runAsNonRoot"])
        self.assertEqual((pod["runAsUser"], pod["runAsGroup"]), (UID, UID))
        self.assertEqual((c["runAsUser"], c["runAsGroup"]), (UID, UID))
        self.assertTrue(c["readOnlyRootFilesystem"])
        self.assertFalse(c["allowPrivilegeEscalation"])
        self.assertEqual(c["capabilities"]["drop"], ["ALL"])

    def test_probes_use_the_supervisor_endpoints(self):
        self.assertEqual(self.container["readinessProbe"]["httpGet"]["path"], "/readyz")
        self.assertEqual(self.container["livenessProbe"]["httpGet"]["path"], "/livez")
        for probe in ("readinessProbe", "livenessProbe"):
            self.assertEqual(self.container[probe]["httpGet"]["port"], "metrics")

    def test_grace_period_covers_the_shutdown_grace(self):
        env = {e["name"]: e["value"] for e in self.container["env"]}
        grace = int(env["SUPERVISOR_SHUTDOWN_GRACE"].rstrip("s"))
        self.assertEqual(grace, SHUTDOWN_GRACE_S)
        self.assertGreater(self.pod["terminationGracePeriodSeconds"], grace + 1)

    def test_scrape_annotations_and_resources(self):
        ann = self.deploy["spec"]["template"]["metadata"]["annotations"]
        self.assertEqual((ann["prometheus.io/scrape"], ann["prometheus.io/port"]), ("true", "9090"))
        self.assertIn("memory", self.container["resources"]["limits"])
        self.assertEqual(self.container["args"], ["run"])


class NetworkPolicy(unittest.TestCase):
    def test_ingress_is_the_region_ports_and_metrics_only(self):
        (policy,) = docs("deploy/k8s/networkpolicy.yaml")
        self.assertEqual(policy["spec"]["podSelector"]["matchLabels"],
                         {"app.kubernetes.io/name": "finfocus-plugin-aws-public"})
        self.assertEqual(policy["spec"]["egress"], [])
        (rule,) = policy["spec"]["ingress"]
        self.assertNotIn("from", rule)
        allowed = set()
        for p in rule["ports"]:
            self.assertEqual(p["protocol"], "TCP")
            allowed.update(range(p["port"], p.get("endPort", p["port"]) + 1))
        self.assertEqual(allowed, {*PORTS.values(), 9090})


class Ecs(unittest.TestCase):
    def setUp(self):
        self.td = json.loads(read("deploy/ecs/task-definition.json"))
        (self.c,) = self.td["containerDefinitions"]

    def test_fargate_shape(self):
        self.assertEqual(self.td["networkMode"], "awsvpc")
        self.assertEqual(self.td["requiresCompatibilities"], ["FARGATE"])
        self.assertEqual((self.td["cpu"], self.td["memory"]), ("2048", "4096"))

    def test_ports_user_health_and_logs(self):
        ports = {p["name"]: p["containerPort"] for p in self.c["portMappings"]}
        self.assertEqual(ports, {**PORTS, "metrics": 9090})
        self.assertEqual(self.c["user"], f"{UID}:{UID}")
        self.assertTrue(self.c["readonlyRootFilesystem"])
        self.assertEqual(self.c["healthCheck"]["command"][1:3], ["/usr/local/bin/region-supervisor", "healthcheck"])
        self.assertGreater(self.c["stopTimeout"], SHUTDOWN_GRACE_S)
        opts = self.c["logConfiguration"]["options"]
        self.assertEqual(self.c["logConfiguration"]["logDriver"], "awslogs")
        self.assertIn("awslogs-stream-prefix", opts)

    def test_doc_embeds_this_task_definition(self):
        doc = read("docs/ecs-deployment.md")
        blocks = re.findall(r"```json\n(.*?)```", doc, re.S)
        self.assertIn(self.td, [json.loads(b) for b in blocks])

    def test_doc_says_how_to_add_the_govcloud_regions(self):
        doc = read("docs/ecs-deployment.md")
        section = doc[doc.index("## Adding the GovCloud regions"):]
        (build,) = re.findall(r"--build-arg REGIONS=(\S+)", section)
        self.assertEqual(build.split(","), TABLE)
        for port in ("8010", "8011"):
            self.assertIn(port, section)


def stage(dockerfile, name):
    """The text of one stage of the Dockerfile: from its FROM line to the next FROM."""
    start = re.search(rf"^FROM .* AS {re.escape(name)}$", dockerfile, re.M).start()
    end = dockerfile.find("\nFROM ", start + 1)
    return dockerfile[start:] if end < 0 else dockerfile[start:end]


def shell_list(path, name):
    """A NAME="a b c" or NAME="a,b,c" assignment of a shell script, as a list."""
    (value,) = re.findall(rf'^{name}="([^"]*)"$', read(path), re.M)
    return value.replace(",", " ").split()


class Image(unittest.TestCase):
    def test_regions_default_is_what_upstream_releases(self):
        df = read("Dockerfile")
        (default,) = re.findall(r"^ARG REGIONS=(\S+)$", df, re.M)
        self.assertEqual(default.split(","), REGIONS)
        for path in ("docker/fetch-plugins", "scripts/fake-release.sh"):
            self.assertEqual(shell_list(path, "TABLE"), TABLE, path)
            self.assertEqual(shell_list(path, "PUBLISHED"), REGIONS, path)

    def test_the_image_bakes_in_regions_and_says_which(self):
        df = read("Dockerfile")
        full = df[df.rindex("\nFROM "):]
        self.assertIn("ENV SUPERVISOR_REGIONS=${REGIONS}", full)
        self.assertIn("ARG REGIONS\n", full)
        self.assertNotIn("SUPERVISOR_REGIONS", stage(df, "supervisor-image"))
        self.assertIn('fetch-plugins "${VERSION}" "${TARGETARCH}" /out/plugins "${REGIONS}"',
                      stage(df, "plugins-download"))
        self.assertIn('/out/plugins "${REGIONS}"', stage(df, "plugins-context"))
        self.assertIn("ARG RELEASE_URL=https://github.com/rshade/finfocus-plugin-aws-public/releases/download", df)

    def test_the_download_stage_installs_nothing(self):
        df = read("Dockerfile")
        for name in ("plugins-download", "plugins-context"):
            text = stage(df, name)
            for installer in ("apk ", "apt-get", "apt ", "yum", "dnf", "pip "):
                self.assertNotIn(installer, text, f"{name} runs {installer}")

    def test_structure_tests_expect_the_default_regions(self):
        config = yaml.safe_load(read("tests/deploy/image-structure.yaml"))
        env = {e["key"]: e["value"] for e in config["metadataTest"]["envVars"]}
        self.assertEqual(env["SUPERVISOR_REGIONS"].split(","), REGIONS)
        files = {f["path"]: f["shouldExist"] for f in config["fileExistenceTests"]}
        for region in TABLE:
            self.assertEqual(files[f"/usr/local/bin/finfocus-plugin-aws-public-{region}"], region in REGIONS, region)
        supervisor = yaml.safe_load(read("tests/deploy/supervisor-image-structure.yaml"))
        files = {f["path"]: f["shouldExist"] for f in supervisor["fileExistenceTests"]}
        for region in TABLE:
            self.assertFalse(files[f"/usr/local/bin/finfocus-plugin-aws-public-{region}"], region)

    def test_dockerfile_agrees(self):
        df = read("Dockerfile")
        self.assertIn("EXPOSE 8001-8012 9090", df)
        self.assertIn(f"USER {UID}:{UID}", df)
        self.assertIn('CMD ["/usr/local/bin/region-supervisor", "healthcheck"', df)
        self.assertIn("ENV FINFOCUS_PLUGIN_WEB_ENABLED=true FINFOCUS_PLUGIN_HEALTH_ENDPOINT=true", df)
        self.assertIn("ARG BASE_IMAGE=alpine:3.19", df)
        self.assertNotRegex(df, r"\b(tini|bash)\b")

    def test_healthcheck_command_is_the_same_everywhere(self):
        df = read("Dockerfile")
        docker_cmd = re.search(r'CMD \["(/usr/local/bin/region-supervisor)", "(healthcheck)", "(--quiet)"\]', df).groups()
        td = json.loads(read("deploy/ecs/task-definition.json"))
        self.assertEqual(tuple(td["containerDefinitions"][0]["healthCheck"]["command"][1:]), docker_cmd)

    def test_workflows_pin_actions_by_sha(self):
        for name in ("ci.yml", "docker-publish.yml"):
            wf = yaml.safe_load(read(f".github/workflows/{name}"))
            self.assertIn("permissions", wf, name)
            for job in wf["jobs"].values():
                for step in job["steps"]:
                    if "uses" in step:
                        self.assertRegex(step["uses"], r"@[0-9a-f]{40}$", f"{name}: {step['uses']}")


if __name__ == "__main__":
    unittest.main()
