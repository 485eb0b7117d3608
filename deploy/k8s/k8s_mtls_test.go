package k8s_test

import (
	"bytes"
	"os"
	"path"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// The mutual-TLS pod: m1-authz's TLS files come from a mounted Secret,
// Envoy's SDS files from the ConfigMap of deploy/envoy/sds, and the
// certificate files those name from a Secret mounted where their
// watched_directory looks (the mount's root, where Kubernetes swaps
// ..data on an update).
func TestToolPodMTLS(t *testing.T) {
	p := checkToolPod(t, "tool-pod-mtls.yaml", "../envoy/envoy-mtls.yaml")
	volumes := map[string]corev1.Volume{}
	for _, v := range p.pod.Volumes {
		volumes[v.Name] = v
	}
	// mountOf returns the volume mounted at dir in container c.
	mountOf := func(c, dir string) (corev1.Volume, bool) {
		for _, m := range p.containers[c].VolumeMounts {
			if m.MountPath == dir {
				if !m.ReadOnly {
					t.Errorf("container %s: %s is mounted read-write, want readOnly", c, dir)
				}
				v, ok := volumes[m.Name]
				return v, ok
			}
		}
		return corev1.Volume{}, false
	}

	for _, name := range []string{"M1_TLS_CERT_FILE", "M1_TLS_KEY_FILE", "M1_TLS_CLIENT_CA_FILE"} {
		file := p.env[name].Value
		if file == "" {
			t.Errorf("m1-authz: %s not set", name)
			continue
		}
		if v, ok := mountOf("m1-authz", path.Dir(file)); !ok || v.Secret == nil {
			t.Errorf("m1-authz: %s=%s is not in a mounted Secret", name, file)
		}
	}

	// Envoy: the SDS files from a ConfigMap, the certificates they name
	// from a Secret.
	var envoyCfg, sdsDirs = readYAML(t, "../envoy/envoy-mtls.yaml"), map[string]bool{}
	walk(envoyCfg, func(key string, m map[string]any) {
		if key == "path_config_source" {
			sdsDirs[path.Dir(m["path"].(string))] = true
		}
	})
	if len(sdsDirs) == 0 {
		t.Fatal("envoy-mtls.yaml names no SDS file")
	}
	for dir := range sdsDirs {
		if v, ok := mountOf("envoy", dir); !ok || v.ConfigMap == nil {
			t.Errorf("envoy: SDS directory %s is not a mounted ConfigMap", dir)
		}
	}
	sdsFiles, _ := filepath.Glob("../envoy/sds/*.yaml")
	if len(sdsFiles) == 0 {
		t.Fatal("no deploy/envoy/sds files")
	}
	for _, f := range sdsFiles {
		walk(readYAML(t, f), func(key string, m map[string]any) {
			switch key {
			case "certificate_chain", "private_key", "trusted_ca":
				dir := path.Dir(m["filename"].(string))
				if v, ok := mountOf("envoy", dir); !ok || v.Secret == nil {
					t.Errorf("envoy: %s (%s) is not in a mounted Secret", m["filename"], f)
				}
			case "watched_directory":
				if v, ok := mountOf("envoy", m["path"].(string)); !ok || v.Secret == nil {
					t.Errorf("envoy: watched_directory %s (%s) is not the root of a mounted Secret: its ..data swap would go unseen", m["path"], f)
				}
			}
		})
	}
	if s := p.annotations["prometheus.io/scheme"]; s != "https" {
		t.Errorf("prometheus.io/scheme = %q, want https: the admin port serves TLS", s)
	}
}

func readYAML(t *testing.T, file string) any {
	t.Helper()
	raw, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var doc any
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	return doc
}

// walk calls fn for every mapping value of doc with the key it is under.
func walk(doc any, fn func(key string, m map[string]any)) {
	switch d := doc.(type) {
	case map[string]any:
		for k, v := range d {
			if m, ok := v.(map[string]any); ok {
				fn(k, m)
			}
			walk(v, fn)
		}
	case []any:
		for _, v := range d {
			walk(v, fn)
		}
	}
}

// tool-pod-mtls.yaml is tool-pod.yaml plus its TLS settings and nothing
// else: a change to one that is not made to the other fails here.
func TestToolPodMTLSMatchesPlain(t *testing.T) {
	plain, mtls := deployment(t, "tool-pod.yaml"), deployment(t, "tool-pod-mtls.yaml")
	tlsVolumes := map[string]bool{"envoy-sds": true, "envoy-tls": true, "m1-tls": true}
	pod := &mtls.Spec.Template.Spec
	pod.Volumes = slices.DeleteFunc(pod.Volumes, func(v corev1.Volume) bool { return tlsVolumes[v.Name] })
	for i := range pod.Containers {
		c := &pod.Containers[i]
		c.VolumeMounts = slices.DeleteFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool { return tlsVolumes[m.Name] })
		c.Env = slices.DeleteFunc(c.Env, func(e corev1.EnvVar) bool { return strings.HasPrefix(e.Name, "M1_TLS_") })
		for _, p := range []*corev1.Probe{c.StartupProbe, c.ReadinessProbe, c.LivenessProbe} {
			if p != nil && p.HTTPGet != nil {
				p.HTTPGet.Scheme = ""
			}
		}
	}
	delete(mtls.Spec.Template.Annotations, "prometheus.io/scheme")
	if !reflect.DeepEqual(plain, mtls) {
		t.Error("tool-pod-mtls.yaml must be tool-pod.yaml plus the TLS volumes, mounts, M1_TLS_* env, HTTPS probes and prometheus.io/scheme")
	}
}

// deployment decodes the Deployment, the first document of file.
func deployment(t *testing.T, file string) *appsv1.Deployment {
	t.Helper()
	raw, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	doc, _, _ := bytes.Cut(raw, []byte("\n---\n"))
	var d appsv1.Deployment
	if err := yaml.UnmarshalStrict(doc, &d); err != nil || d.Kind != "Deployment" {
		t.Fatalf("%s: first document: %v (kind %q), want a Deployment", file, err, d.Kind)
	}
	return &d
}
