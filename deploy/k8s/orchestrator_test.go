package k8s_test

import (
	"bytes"
	"net/url"
	"os"
	"path"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"

	"github.com/m1-agent/m1/deploy/deploytest"
)

// manifests are the documents of one file of deploy/k8s, each decoded
// strictly into its Kubernetes API type.
type manifests struct {
	deployment    *appsv1.Deployment
	service       *corev1.Service
	networkPolicy *networkingv1.NetworkPolicy
}

func decodeManifests(t *testing.T, file string) manifests {
	t.Helper()
	raw, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var m manifests
	for i, doc := range bytes.Split(raw, []byte("\n---\n")) {
		var meta struct{ Kind string }
		if err := yaml.Unmarshal(doc, &meta); err != nil {
			t.Fatalf("%s: document %d: %v", file, i, err)
		}
		var obj any
		switch meta.Kind {
		case "Deployment":
			m.deployment = &appsv1.Deployment{}
			obj = m.deployment
		case "Service":
			m.service = &corev1.Service{}
			obj = m.service
		case "NetworkPolicy":
			m.networkPolicy = &networkingv1.NetworkPolicy{}
			obj = m.networkPolicy
		default:
			t.Fatalf("%s: document %d: unexpected kind %q", file, i, meta.Kind)
		}
		if err := yaml.UnmarshalStrict(doc, obj); err != nil {
			t.Fatalf("%s: document %d (%s): %v", file, i, meta.Kind, err)
		}
	}
	if m.deployment == nil || m.service == nil || m.networkPolicy == nil {
		t.Fatalf("%s: want a Deployment, a Service and a NetworkPolicy", file)
	}
	return m
}

func container(t *testing.T, d *appsv1.Deployment, name string) corev1.Container {
	t.Helper()
	for _, c := range d.Spec.Template.Spec.Containers {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("deployment %s has no container %s", d.Name, name)
	return corev1.Container{}
}

func envOf(c corev1.Container) map[string]corev1.EnvVar {
	env := map[string]corev1.EnvVar{}
	for _, e := range c.Env {
		env[e.Name] = e
	}
	return env
}

// TestToolPodRollout: the rolling update of docs/DEPLOY.md's canary step
// replaces one pod at a time, never drops below the replica count, and
// gives the operator a window to pause after the first new pod.
func TestToolPodRollout(t *testing.T) {
	d := decodeManifests(t, "tool-pod.yaml").deployment
	s := d.Spec.Strategy
	if s.Type != appsv1.RollingUpdateDeploymentStrategyType || s.RollingUpdate == nil ||
		s.RollingUpdate.MaxSurge == nil || *s.RollingUpdate.MaxSurge != intstr.FromInt32(1) ||
		s.RollingUpdate.MaxUnavailable == nil || *s.RollingUpdate.MaxUnavailable != intstr.FromInt32(0) {
		t.Errorf("tool pod strategy = %+v, want RollingUpdate with maxSurge 1, maxUnavailable 0", s)
	}
	if d.Spec.MinReadySeconds < 10 {
		t.Errorf("tool pod minReadySeconds = %d, want at least 10 (the canary's pause window)", d.Spec.MinReadySeconds)
	}
}

// TestOrchestrator checks deploy/k8s/orchestrator.yaml: one active
// instance, the settings the orchestrator requires and documents, secrets
// from a Secret, the shared store, probes and ports that agree, and the same
// image, audience and JWKS as the tool pod, whose Service it dispatches to.
func TestOrchestrator(t *testing.T) {
	m := decodeManifests(t, "orchestrator.yaml")
	tool := decodeManifests(t, "tool-pod.yaml")
	d := m.deployment

	// One active instance: never two, not even during a rollout.
	replicas := int32(1) // the API's default
	if d.Spec.Replicas != nil {
		replicas = *d.Spec.Replicas
	}
	if replicas != 1 || d.Spec.Strategy.Type != appsv1.RecreateDeploymentStrategyType {
		t.Errorf("replicas %d, strategy %q; want 1 and Recreate", replicas, d.Spec.Strategy.Type)
	}
	// Failover: evicted from a failed node within a minute, not the default 5.
	for _, key := range []string{"node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"} {
		found := false
		for _, tol := range d.Spec.Template.Spec.Tolerations {
			if tol.Key == key && tol.Effect == corev1.TaintEffectNoExecute && tol.TolerationSeconds != nil && *tol.TolerationSeconds <= 60 {
				found = true
			}
		}
		if !found {
			t.Errorf("want a NoExecute toleration of %s of at most 60 s", key)
		}
	}

	pod := d.Spec.Template.Spec
	if len(pod.Containers) != 1 {
		t.Fatalf("containers = %d, want m1-orchestrator alone", len(pod.Containers))
	}
	c := container(t, d, "m1-orchestrator")
	if c.Image != container(t, tool.deployment, "m1-authz").Image || !deploytest.PinnedImage(c.Image) {
		t.Errorf("image %q, want the tool pod's m1 image, pinned", c.Image)
	}
	if len(c.Command) != 1 || c.Command[0] != "/usr/local/bin/m1-orchestrator" {
		t.Errorf("command = %q, want the m1-orchestrator binary (the image's entrypoint is m1-authz)", c.Command)
	}
	if sc := c.SecurityContext; sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
		sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Error("want a read-only root file system and no privilege escalation")
	}
	if pod.SecurityContext == nil || pod.SecurityContext.RunAsNonRoot == nil || !*pod.SecurityContext.RunAsNonRoot {
		t.Error("pod: want runAsNonRoot")
	}

	// Every setting is one docs/ORCHESTRATOR.md documents; the required ones
	// are set; secrets and the store come from a Secret.
	doc, err := os.ReadFile("../../docs/ORCHESTRATOR.md")
	if err != nil {
		t.Fatal(err)
	}
	env := envOf(c)
	for name, e := range env {
		if !bytes.Contains(doc, []byte("`"+name+"`")) {
			t.Errorf("env %s is not in docs/ORCHESTRATOR.md", name)
		}
		secret := name == "M1_ADMIN_TOKEN" || name == "M1_DATABASE_URL" || name == "ANTHROPIC_API_KEY"
		if secret && (e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil) {
			t.Errorf("env %s is not from a Secret", name)
		}
	}
	for _, name := range []string{"M1_JWKS_FILE", "M1_AUDIENCE", "M1_DATABASE_URL", "M1_ADMIN_TOKEN", "M1_ORCHESTRATOR_ADDR", "M1_DATA_DIR"} {
		if _, ok := env[name]; !ok {
			t.Errorf("env %s is not set (the orchestrator requires it, or one instance cannot hand over to the next without it)", name)
		}
	}
	toolEnv := envOf(container(t, tool.deployment, "m1-authz"))
	if env["M1_AUDIENCE"].Value != toolEnv["M1_AUDIENCE"].Value {
		t.Errorf("M1_AUDIENCE %q, want the tool pod's %q (approvals name it)", env["M1_AUDIENCE"].Value, toolEnv["M1_AUDIENCE"].Value)
	}
	if env["M1_JWKS_FILE"].Value != toolEnv["M1_JWKS_FILE"].Value {
		t.Errorf("M1_JWKS_FILE %q, want the tool pod's %q", env["M1_JWKS_FILE"].Value, toolEnv["M1_JWKS_FILE"].Value)
	}
	// The JWKS file and the data directory are mounted: the JWKS from the
	// ConfigMap the tool pod reads, read-only.
	mounts := map[string]corev1.VolumeMount{}
	for _, vm := range c.VolumeMounts {
		mounts[vm.MountPath] = vm
	}
	volumes := map[string]corev1.Volume{}
	for _, v := range pod.Volumes {
		volumes[v.Name] = v
	}
	jwks, ok := mounts[path.Dir(env["M1_JWKS_FILE"].Value)]
	if !ok || !jwks.ReadOnly || volumes[jwks.Name].ConfigMap == nil || volumes[jwks.Name].ConfigMap.Name != "m1-jwks" {
		t.Errorf("M1_JWKS_FILE's directory: want a read-only mount of ConfigMap m1-jwks, got %+v", jwks)
	}
	if _, ok := mounts[env["M1_DATA_DIR"].Value]; !ok {
		t.Errorf("M1_DATA_DIR %q is not a mounted volume (the file system is read-only)", env["M1_DATA_DIR"].Value)
	}
	// It dispatches through the tool pod's Service (Envoy), by its name.
	u, err := url.Parse(env["M1_TOOL_ENDPOINT"].Value)
	if err != nil || u.Scheme != "http" || strings.Split(u.Hostname(), ".")[0] != tool.service.Name ||
		(u.Port() != "" && u.Port() != "80") || tool.service.Spec.Ports[0].Port != 80 {
		t.Errorf("M1_TOOL_ENDPOINT %q, want http://%s… (the tool pod's Service, port %d)", env["M1_TOOL_ENDPOINT"].Value, tool.service.Name, tool.service.Spec.Ports[0].Port)
	}

	// One port: M1_ORCHESTRATOR_ADDR's, probed on the health endpoints,
	// scraped, served, and the only one the network policy opens.
	if p := c.Ports; len(p) != 1 || p[0].ContainerPort != 9193 || env["M1_ORCHESTRATOR_ADDR"].Value != ":9193" {
		t.Errorf("ports %v with M1_ORCHESTRATOR_ADDR %q, want 9193", p, env["M1_ORCHESTRATOR_ADDR"].Value)
	}
	for probe, want := range map[*corev1.Probe]string{c.StartupProbe: "/health/startup", c.ReadinessProbe: "/health/ready", c.LivenessProbe: "/health/live"} {
		if probe == nil || probe.HTTPGet == nil || probe.HTTPGet.Path != want || probe.HTTPGet.Port.String() != c.Ports[0].Name {
			t.Errorf("probe = %+v, want GET %s on %s", probe, want, c.Ports[0].Name)
		}
	}
	// docs/DEPLOY.md's m1-authz job keeps the annotated pods labelled
	// part-of m1: this pod must not be one of them, or it would count as a
	// sidecar (up{job="m1-authz"}). Its job scrapes the Service.
	if d.Spec.Template.Annotations["prometheus.io/scrape"] == "true" {
		t.Error(`want no prometheus.io/scrape annotation: the m1-authz scrape job would take the orchestrator for a sidecar`)
	}
	if p := m.service.Spec.Ports; len(p) != 1 || p[0].TargetPort.String() != c.Ports[0].Name {
		t.Errorf("Service ports = %v, want one, to %s", p, c.Ports[0].Name)
	}
	for _, rule := range m.networkPolicy.Spec.Ingress {
		for _, p := range rule.Ports {
			if p.Port.IntValue() != 9193 {
				t.Errorf("NetworkPolicy opens port %v", p.Port)
			}
		}
	}
	grace := pod.TerminationGracePeriodSeconds
	if grace == nil || *grace <= 30 {
		t.Errorf("terminationGracePeriodSeconds = %v, want more than M1_DISPATCH_TIMEOUT (30 s)", grace)
	}
}
