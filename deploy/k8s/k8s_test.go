// Package k8s_test checks deploy/k8s: every document decodes strictly into
// its Kubernetes API type (a misspelt field fails), and the pod agrees with
// deploy/envoy/envoy.yaml and m1-authz's documented settings.
package k8s_test

import (
	"bytes"
	"cmp"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"sigs.k8s.io/yaml"

	"github.com/m1-agent/m1/deploy/deploytest"
)

func TestToolPod(t *testing.T) { checkToolPod(t, "tool-pod.yaml", "../envoy/envoy.yaml") }

// toolPod is a checked tool pod manifest.
type toolPod struct {
	pod        corev1.PodSpec
	containers map[string]corev1.Container
	env        map[string]corev1.EnvVar // m1-authz's
	// annotations are the pod template's.
	annotations map[string]string
}

// checkToolPod decodes file strictly and checks the pod against envoyFile
// and m1-authz's documented settings.
func checkToolPod(t *testing.T, file, envoyFile string) toolPod {
	t.Helper()
	raw, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var (
		dep *appsv1.Deployment
		svc *corev1.Service
		np  *networkingv1.NetworkPolicy
	)
	for i, doc := range bytes.Split(raw, []byte("\n---\n")) {
		var meta struct{ Kind string }
		if err := yaml.Unmarshal(doc, &meta); err != nil {
			t.Fatalf("document %d: %v", i, err)
		}
		var obj any
		switch meta.Kind {
		case "Deployment":
			dep = &appsv1.Deployment{}
			obj = dep
		case "Service":
			svc = &corev1.Service{}
			obj = svc
		case "NetworkPolicy":
			np = &networkingv1.NetworkPolicy{}
			obj = np
		default:
			t.Fatalf("document %d: unexpected kind %q", i, meta.Kind)
		}
		if err := yaml.UnmarshalStrict(doc, obj); err != nil {
			t.Fatalf("document %d (%s): %v", i, meta.Kind, err)
		}
	}
	if dep == nil || svc == nil || np == nil {
		t.Fatalf("%s: want a Deployment, a Service and a NetworkPolicy", file)
	}
	envoy := envoyPorts(t, envoyFile)
	pod := dep.Spec.Template.Spec
	containers := map[string]corev1.Container{}
	for _, c := range pod.Containers {
		containers[c.Name] = c
		if !deploytest.PinnedImage(c.Image) {
			t.Errorf("container %s: image %q is not pinned to a version (never latest)", c.Name, c.Image)
		}
		if sc := c.SecurityContext; sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
			sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
			t.Errorf("container %s: want a read-only root file system and no privilege escalation", c.Name)
		}
	}
	if pod.SecurityContext == nil || pod.SecurityContext.RunAsNonRoot == nil || !*pod.SecurityContext.RunAsNonRoot {
		t.Error("pod: want runAsNonRoot")
	}
	m1, ok := containers["m1-authz"]
	if !ok || containers["envoy"].Name == "" || containers["tool"].Name == "" {
		t.Fatalf("containers = %v, want tool, envoy and m1-authz", containers)
	}

	// m1-authz listens where Envoy's ext_authz cluster points, on loopback.
	env := map[string]corev1.EnvVar{}
	for _, e := range m1.Env {
		env[e.Name] = e
	}
	if host, port := splitHostPort(t, env["M1_GRPC_ADDR"].Value); host != "127.0.0.1" || port != envoy["m1_authz"] {
		t.Errorf("M1_GRPC_ADDR = %q, want 127.0.0.1:%d (deploy/envoy's m1_authz cluster)", env["M1_GRPC_ADDR"].Value, envoy["m1_authz"])
	}
	if !strings.Contains(strings.Join(containers["tool"].Args, " "), "127.0.0.1:"+strconv.Itoa(envoy["tool"])) {
		t.Errorf("tool args = %q, want it on 127.0.0.1:%d (deploy/envoy's tool cluster)", containers["tool"].Args, envoy["tool"])
	}
	if p := containers["envoy"].Ports; len(p) != 1 || int(p[0].ContainerPort) != envoy["listener"] {
		t.Errorf("envoy ports = %v, want %d (deploy/envoy's listener)", p, envoy["listener"])
	}
	// Every setting is one m1-authz documents; secrets come from a Secret.
	docs, err := os.ReadFile("../../docs/CONFIGURATION.md")
	if err != nil {
		t.Fatal(err)
	}
	for name, e := range env {
		if !bytes.Contains(docs, []byte("`"+name+"`")) {
			t.Errorf("m1-authz env %s is not in docs/CONFIGURATION.md", name)
		}
		if (name == "M1_ADMIN_TOKEN" || name == "M1_DATABASE_URL" || name == "REDIS_URL") && e.ValueFrom == nil {
			t.Errorf("m1-authz env %s is a literal; want it from a Secret", name)
		}
	}
	// Probes on the admin port's health endpoints, over HTTPS when it
	// serves TLS.
	scheme := corev1.URISchemeHTTP
	if env["M1_TLS_CERT_FILE"].Value != "" {
		scheme = corev1.URISchemeHTTPS
	}
	for probe, want := range map[*corev1.Probe]string{m1.StartupProbe: "/health/startup", m1.ReadinessProbe: "/health/ready", m1.LivenessProbe: "/health/live"} {
		if probe == nil || probe.HTTPGet == nil || probe.HTTPGet.Path != want || probe.HTTPGet.Port.String() != "m1-admin" || cmp.Or(probe.HTTPGet.Scheme, corev1.URISchemeHTTP) != scheme {
			t.Errorf("m1-authz probe = %+v, want GET %s on m1-admin over %s", probe, want, scheme)
		}
	}
	if p := m1.Ports; len(p) != 1 || p[0].ContainerPort != 9192 || env["M1_ADMIN_ADDR"].Value != ":9192" {
		t.Errorf("m1-authz admin port = %v with M1_ADMIN_ADDR %q, want 9192", p, env["M1_ADMIN_ADDR"].Value)
	}
	// The Service reaches Envoy only; the network policy opens Envoy's port
	// and the admin port, never the gRPC port.
	if len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].TargetPort.String() != "tool" {
		t.Errorf("Service ports = %v, want one, to envoy's port", svc.Spec.Ports)
	}
	for _, rule := range np.Spec.Ingress {
		for _, p := range rule.Ports {
			if p.Port.IntValue() != envoy["listener"] && p.Port.IntValue() != 9192 {
				t.Errorf("NetworkPolicy opens port %v", p.Port)
			}
		}
	}
	return toolPod{pod: pod, containers: containers, env: env, annotations: dep.Spec.Template.Annotations}
}

// envoyPorts reads an Envoy config's listener and cluster ports.
func envoyPorts(t *testing.T, file string) map[string]int {
	t.Helper()
	raw, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	type addr struct {
		SocketAddress struct {
			PortValue int `json:"port_value"`
		} `json:"socket_address"`
	}
	var cfg struct {
		StaticResources struct {
			Listeners []struct {
				Address addr `json:"address"`
			} `json:"listeners"`
			Clusters []struct {
				Name           string `json:"name"`
				LoadAssignment struct {
					Endpoints []struct {
						LbEndpoints []struct {
							Endpoint struct {
								Address addr `json:"address"`
							} `json:"endpoint"`
						} `json:"lb_endpoints"`
					} `json:"endpoints"`
				} `json:"load_assignment"`
			} `json:"clusters"`
		} `json:"static_resources"`
	}
	if err := yaml.Unmarshal(raw, &cfg); err != nil {
		t.Fatal(err)
	}
	ports := map[string]int{}
	if l := cfg.StaticResources.Listeners; len(l) == 1 {
		ports["listener"] = l[0].Address.SocketAddress.PortValue
	}
	for _, c := range cfg.StaticResources.Clusters {
		for _, e := range c.LoadAssignment.Endpoints {
			for _, lb := range e.LbEndpoints {
				ports[c.Name] = lb.Endpoint.Address.SocketAddress.PortValue
			}
		}
	}
	if ports["listener"] == 0 || ports["m1_authz"] == 0 || ports["tool"] == 0 {
		t.Fatalf("%s ports = %v, want a listener and the m1_authz and tool clusters", file, ports)
	}
	return ports
}

func splitHostPort(t *testing.T, hostport string) (string, int) {
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		t.Errorf("%q: %v", hostport, err)
		return "", 0
	}
	n, _ := strconv.Atoi(port)
	return host, n
}
