// Package compose_test checks deploy/compose without a Docker engine:
// compose.yaml is loaded by compose-go, the loader Docker Compose itself
// uses (schema, interpolation from .env.example, path resolution), and held
// to the services table of docs/DEPLOY.md, to deploy/envoy/envoy.yaml's
// ports, to the settings the binaries document, and to the image tags of
// deploy/k8s and CHANGELOG.md. Prometheus's configuration is checked by
// promtool with the files where the container sees them; the Grafana
// dashboards decode strictly into grafana-foundation-sdk's types, and every
// PromQL expression in them parses and names only metrics M1 registers.
package compose_test

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"
	"gopkg.in/yaml.v3"

	"github.com/m1-agent/m1/deploy/deploytest"
	"github.com/m1-agent/m1/internal/testenv"
)

// M1 images run as the distroless nonroot user; their health checks are
// `m1 health --url …` (no shell, no curl).
const m1HealthCmd = "/usr/local/bin/m1"

// load loads compose.yaml as `docker compose` does from deploy/compose,
// with the variables of the env files only (not the test's environment).
func load(t *testing.T, opts ...cli.ProjectOptionsFn) (*types.Project, error) {
	t.Helper()
	o, err := cli.NewProjectOptions([]string{"compose.yaml"}, append([]cli.ProjectOptionsFn{cli.WithWorkingDirectory(".")}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	return o.LoadProject(context.Background())
}

func loadExample(t *testing.T) (*types.Project, map[string]string) {
	t.Helper()
	p, err := load(t, cli.WithEnvFiles(".env.example"), cli.WithDotEnv)
	if err != nil {
		t.Fatalf("compose.yaml with .env.example: %v", err)
	}
	env := map[string]string{}
	for k, v := range p.Environment {
		env[k] = v
	}
	return p, env
}

func TestCompose(t *testing.T) {
	p, env := loadExample(t)
	envoy := envoyConfig(t)
	svc := func(name string) types.ServiceConfig {
		t.Helper()
		s, err := p.GetService(name)
		if err != nil {
			t.Fatalf("service %s: %v", name, err)
		}
		return s
	}

	// The services, images and host ports are those docs/DEPLOY.md lists.
	documented := documentedServices(t)
	var names []string
	for name := range p.Services {
		names = append(names, name)
	}
	slices.Sort(names)
	if want := sortedKeys(documented); !slices.Equal(names, want) {
		t.Errorf("services = %v, docs/DEPLOY.md documents %v", names, want)
	}
	for name, doc := range documented {
		s, ok := p.Services[name]
		if !ok {
			continue
		}
		if s.Image != doc.image {
			t.Errorf("%s: image %q, docs/DEPLOY.md says %q", name, s.Image, doc.image)
		}
		var published []string
		for _, port := range s.Ports {
			if port.HostIP != "127.0.0.1" {
				t.Errorf("%s: port %s published on %q; publish on 127.0.0.1 only (a laptop on a café network)", name, port.Published, port.HostIP)
			}
			published = append(published, "localhost:"+port.Published)
		}
		slices.Sort(published)
		if !slices.Equal(published, doc.hostPorts) {
			t.Errorf("%s: published %v, docs/DEPLOY.md says %v", name, published, doc.hostPorts)
		}
	}

	// Every image is pinned to a version; M1's and Envoy's are those of
	// deploy/k8s, and M1's is the release in CHANGELOG.md.
	version := changelogVersion(t)
	k8s := k8sImages(t)
	for name, s := range p.Services {
		if !deploytest.PinnedImage(s.Image) {
			t.Errorf("%s: image %q is not pinned to a version (never latest)", name, s.Image)
		}
	}
	m1Image := "ghcr.io/m1-agent/m1:" + version
	for _, name := range []string{"m1-authz", "m1-demo-tool", "m1-orchestrator"} {
		s := svc(name)
		if s.Image != m1Image {
			t.Errorf("%s: image %q, want %q (the release in CHANGELOG.md)", name, s.Image, m1Image)
		}
		if s.Build == nil || s.Build.Context != absPath(t, "../..") || s.Build.Args["VERSION"] == nil || *s.Build.Args["VERSION"] != version {
			t.Errorf("%s: build = %+v, want the repository's Dockerfile with VERSION=%s", name, s.Build, version)
		}
		if !s.ReadOnly {
			t.Errorf("%s: want a read-only root file system", name)
		}
	}
	if !slices.Contains(k8s, m1Image) || !slices.Contains(k8s, svc("envoy").Image) {
		t.Errorf("deploy/k8s images %v, want %s and %s as in compose.yaml", k8s, m1Image, svc("envoy").Image)
	}

	// Health checks on every service; M1's probe the port they listen on.
	for name, s := range p.Services {
		hc := s.HealthCheck
		if hc == nil || hc.Disable || len(hc.Test) < 2 || hc.Test[0] == "NONE" {
			t.Errorf("%s: no health check", name)
		}
	}
	wantHealth := map[string]string{
		"m1-authz":        "http://127.0.0.1:" + port(t, env0(svc("m1-authz"), "M1_ADMIN_ADDR")) + "/health/ready",
		"m1-orchestrator": "http://127.0.0.1:" + port(t, env0(svc("m1-orchestrator"), "M1_ORCHESTRATOR_ADDR")) + "/health/ready",
		"m1-demo-tool":    "http://" + flagValue(svc("m1-demo-tool").Command, "--listen") + "/health",
	}
	for name, want := range wantHealth {
		if got := svc(name).HealthCheck.Test; !slices.Equal(got, []string{"CMD", m1HealthCmd, "health", "--url", want}) {
			t.Errorf("%s: health check %q, want m1 health --url %s", name, got, want)
		}
	}
	if got := strings.Join(svc("envoy").HealthCheck.Test, " "); !strings.Contains(got, fmt.Sprintf("/dev/tcp/127.0.0.1/%d", envoy.admin)) || !strings.Contains(got, "GET /ready ") {
		t.Errorf("envoy: health check %q, want GET /ready on the admin port %d of deploy/envoy", got, envoy.admin)
	}

	// Envoy runs deploy/envoy/envoy.yaml itself, mounted where its command
	// reads it, and is reached on localhost:10000.
	e := svc("envoy")
	cfg := mountOf(e, flagValue(e.Command, "--config-path"))
	if cfg == nil || cfg.Type != types.VolumeTypeBind || cfg.Source != absPath(t, "../envoy/envoy.yaml") || !cfg.ReadOnly {
		t.Errorf("envoy: --config-path %q is not a read-only bind of deploy/envoy/envoy.yaml: %+v", flagValue(e.Command, "--config-path"), cfg)
	}
	if !publishes(e, "10000", envoy.listener) {
		t.Errorf("envoy: ports %+v, want localhost:10000 → %d (deploy/envoy's listener)", e.Ports, envoy.listener)
	}

	// m1-authz and the tool share Envoy's network namespace, as a pod's
	// containers do, on the loopback addresses envoy.yaml's clusters name.
	authz, tool, orch := svc("m1-authz"), svc("m1-demo-tool"), svc("m1-orchestrator")
	for _, s := range []types.ServiceConfig{authz, tool} {
		if s.NetworkMode != "service:envoy" {
			t.Errorf("%s: network_mode %q, want service:envoy", s.Name, s.NetworkMode)
		}
	}
	if got, want := env0(authz, "M1_GRPC_ADDR"), fmt.Sprintf("127.0.0.1:%d", envoy.clusters["m1_authz"]); got != want {
		t.Errorf("m1-authz: M1_GRPC_ADDR %q, want %q (deploy/envoy's m1_authz cluster)", got, want)
	}
	if got, want := flagValue(tool.Command, "--listen"), fmt.Sprintf("127.0.0.1:%d", envoy.clusters["tool"]); got != want {
		t.Errorf("m1-demo-tool: --listen %q, want %q (deploy/envoy's tool cluster)", got, want)
	}
	if admin := port(t, env0(authz, "M1_ADMIN_ADDR")); !publishes(e, admin, mustAtoi(t, admin)) {
		t.Errorf("envoy: ports %+v, want m1-authz's admin port %s published (it lives in Envoy's namespace)", e.Ports, admin)
	}
	if !publishes(orch, port(t, env0(orch, "M1_ORCHESTRATOR_ADDR")), mustAtoi(t, port(t, env0(orch, "M1_ORCHESTRATOR_ADDR")))) {
		t.Errorf("m1-orchestrator: ports %+v, want its API port published", orch.Ports)
	}

	// Every setting is one the binary documents.
	checkDocumented(t, authz, "../../docs/CONFIGURATION.md")
	checkDocumented(t, orch, "../../docs/ORCHESTRATOR.md")

	// The shared store and state: one PostgreSQL for both, Redis for the
	// sidecar; the password from .env, never from this file.
	db := env0(authz, "M1_DATABASE_URL")
	if u, err := url.Parse(db); err != nil || u.Scheme != "postgres" || u.Hostname() != "postgres" {
		t.Errorf("m1-authz: M1_DATABASE_URL %q, want postgres://…@postgres", db)
	} else if pw, _ := u.User.Password(); pw != env["POSTGRES_PASSWORD"] || u.User.Username() != env0(svc("postgres"), "POSTGRES_USER") {
		t.Errorf("m1-authz: M1_DATABASE_URL user %q, want the postgres service's user and POSTGRES_PASSWORD", u.User)
	}
	if got := env0(orch, "M1_DATABASE_URL"); got != db {
		t.Errorf("m1-orchestrator: M1_DATABASE_URL %q, want m1-authz's %q (one shared store)", got, db)
	}
	if u, err := url.Parse(env0(authz, "REDIS_URL")); err != nil || u.Hostname() != "redis" {
		t.Errorf("m1-authz: REDIS_URL %q, want the redis service", env0(authz, "REDIS_URL"))
	}
	for dep, cond := range map[string]string{"redis": "service_healthy", "postgres": "service_healthy", "envoy": "service_started"} {
		if authz.DependsOn[dep].Condition != cond {
			t.Errorf("m1-authz: depends_on %s = %q, want %s", dep, authz.DependsOn[dep].Condition, cond)
		}
	}
	if orch.DependsOn["postgres"].Condition != "service_healthy" {
		t.Errorf("m1-orchestrator: want depends_on postgres service_healthy")
	}

	// Public keys only: jwks.json from keys/, read-only, never created
	// empty by Docker, and no private key anywhere.
	for _, s := range []types.ServiceConfig{authz, orch} {
		m := mountOf(s, env0(s, "M1_JWKS_FILE"))
		if m == nil || m.Type != types.VolumeTypeBind || m.Source != absPath(t, "keys/jwks.json") || !m.ReadOnly ||
			m.Bind == nil || bool(m.Bind.CreateHostPath) {
			t.Errorf("%s: M1_JWKS_FILE %q is not a read-only bind of keys/jwks.json with create_host_path false: %+v", s.Name, env0(s, "M1_JWKS_FILE"), m)
		}
	}
	if got, want := env0(orch, "M1_AUDIENCE"), env0(authz, "M1_AUDIENCE"); got == "" || got != want {
		t.Errorf("m1-orchestrator: M1_AUDIENCE %q, want m1-authz's %q", got, want)
	}
	if got, want := env0(orch, "M1_TOOL_ENDPOINT"), fmt.Sprintf("http://envoy:%d", envoy.listener); got != want {
		t.Errorf("m1-orchestrator: M1_TOOL_ENDPOINT %q, want %q: approved calls go through Envoy", got, want)
	}
	for name, s := range p.Services {
		for _, v := range s.Volumes {
			if v.Type == types.VolumeTypeBind && (strings.HasSuffix(v.Source, ".jwk") || v.Source == absPath(t, "keys")) {
				t.Errorf("%s: mounts %s: the signing key stays with the operator", name, v.Source)
			}
			if v.Type == types.VolumeTypeBind && v.Source != absPath(t, "keys/jwks.json") {
				if _, err := os.Stat(v.Source); err != nil {
					t.Errorf("%s: bind source %s: %v", name, v.Source, err)
				}
			}
		}
	}
	if _, err := os.Stat(mountOf(orch, env0(orch, "M1_PLAN_FILE")).Source); err != nil {
		t.Errorf("m1-orchestrator: M1_PLAN_FILE is not mounted from the repository: %v", err)
	}

	// Named volumes for all state: M1's data directories and each server's.
	for name, target := range map[string]string{
		"m1-authz": env0(authz, "M1_DATA_DIR"), "m1-orchestrator": env0(orch, "M1_DATA_DIR"),
		"m1-demo-tool": flagValue(tool.Command, "--dir"), "redis": "/data", "postgres": "/var/lib/postgresql/data",
		"prometheus": "/prometheus", "grafana": "/var/lib/grafana",
	} {
		m := mountOf(svc(name), target)
		if m == nil || m.Type != types.VolumeTypeVolume {
			t.Errorf("%s: %s is not on a named volume", name, target)
		} else if _, ok := p.Volumes[m.Source]; !ok {
			t.Errorf("%s: volume %q is not declared", name, m.Source)
		}
	}

	// README: the section and the walk-through against Envoy's port.
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"docker compose up", "localhost:10000/", "token_replayed", "token_missing"} {
		if !strings.Contains(string(readme), want) {
			t.Errorf("README.md lacks %q (the docker compose walk-through)", want)
		}
	}
}

// TestNoSecretsInFile: every secret comes from .env (compose refuses to
// start without it), and .env.example names each one.
func TestNoSecretsInFile(t *testing.T) {
	if _, err := load(t); err == nil || !strings.Contains(err.Error(), "M1_ADMIN_TOKEN") {
		t.Errorf("compose.yaml without .env: %v, want an error naming M1_ADMIN_TOKEN", err)
	}
	raw, err := load(t, cli.WithInterpolation(false))
	if err != nil {
		t.Fatal(err)
	}
	example, _ := loadExample(t)
	secretName := regexp.MustCompile(`TOKEN|PASSWORD|SECRET|API_KEY`)
	ref := regexp.MustCompile(`\$\{([A-Z0-9_]+)(:[?-][^}]*)?\}`)
	n := 0
	for name, s := range raw.Services {
		for k, v := range s.Environment {
			if v == nil {
				continue
			}
			switch {
			case secretName.MatchString(k):
				// Nothing but a reference: ${VAR:?…}, or ${VAR:-} when optional.
				if ref.ReplaceAllString(*v, "") != "" || !ref.MatchString(*v) {
					t.Errorf("%s: %s = %q is written in compose.yaml; take it from .env", name, k, *v)
				}
			case strings.Contains(*v, "://") && strings.Contains(*v, "@"):
				// A URL with credentials: its password is a reference.
				userinfo := (*v)[strings.Index(*v, "://")+3 : strings.LastIndex(*v, "@")]
				if _, pw, _ := strings.Cut(userinfo, ":"); !ref.MatchString(pw) || ref.ReplaceAllString(pw, "") != "" {
					t.Errorf("%s: %s has a literal password; take it from .env", name, k)
				}
			}
			for _, r := range ref.FindAllStringSubmatch(*v, -1) {
				n++
				if _, ok := example.Environment[r[1]]; !ok {
					t.Errorf("%s: %s uses ${%s}, which .env.example does not name", name, k, r[1])
				}
			}
		}
	}
	if n < 4 {
		t.Errorf("found %d secret references; the scan is broken", n)
	}
}

// TestPrometheusConfig runs promtool check config on prometheus.yml with
// every file the container mounts laid out where it sees it (rule_files
// resolve as in the container), and checks that it scrapes every M1
// process as the jobs the alerting rules name.
func TestPrometheusConfig(t *testing.T) {
	p, _ := loadExample(t)
	prom, err := p.GetService("prometheus")
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	for _, v := range prom.Volumes {
		if v.Type != types.VolumeTypeBind {
			continue
		}
		b, err := os.ReadFile(v.Source)
		if err != nil {
			t.Fatal(err)
		}
		dst := filepath.Join(root, v.Target)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	config := filepath.Join(root, "etc/prometheus/prometheus.yml") // the image's default --config.file
	raw, err := os.ReadFile(config)
	if err != nil {
		t.Fatalf("prometheus.yml is not mounted at the image's default path: %v", err)
	}
	var cfg struct {
		RuleFiles     []string `yaml:"rule_files"`
		ScrapeConfigs []struct {
			JobName       string `yaml:"job_name"`
			StaticConfigs []struct {
				Targets []string          `yaml:"targets"`
				Labels  map[string]string `yaml:"labels"`
			} `yaml:"static_configs"`
		} `yaml:"scrape_configs"`
	}
	if err := yaml.Unmarshal(raw, &cfg); err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(cfg.RuleFiles, "alerts.yml") || mountOf(prom, "/etc/prometheus/alerts.yml") == nil ||
		mountOf(prom, "/etc/prometheus/alerts.yml").Source != absPath(t, "../prometheus/alerts.yml") {
		t.Errorf("rule_files %v: want deploy/prometheus/alerts.yml loaded", cfg.RuleFiles)
	}
	authz, _ := p.GetService("m1-authz")
	orch, _ := p.GetService("m1-orchestrator")
	want := map[string]string{
		// m1-authz lives in Envoy's network namespace.
		"m1-authz":        "envoy:" + port(t, env0(authz, "M1_ADMIN_ADDR")),
		"m1-orchestrator": "m1-orchestrator:" + port(t, env0(orch, "M1_ORCHESTRATOR_ADDR")),
	}
	for _, sc := range cfg.ScrapeConfigs {
		w, ok := want[sc.JobName]
		if !ok {
			continue
		}
		delete(want, sc.JobName)
		if len(sc.StaticConfigs) != 1 || !slices.Equal(sc.StaticConfigs[0].Targets, []string{w}) ||
			sc.StaticConfigs[0].Labels["namespace"] == "" || sc.StaticConfigs[0].Labels["app"] == "" {
			t.Errorf("job %s: %+v, want target %s with namespace and app labels (the rules compare revisions per app)", sc.JobName, sc.StaticConfigs, w)
		}
	}
	if len(want) != 0 {
		t.Errorf("prometheus.yml does not scrape %v", want)
	}

	promtool := testenv.RequireBinary(t, "promtool", "apt-get install -y prometheus (make test and .ci/run do this when they can)")
	out, err := exec.Command(promtool, "check", "config", config).CombinedOutput()
	if err != nil {
		t.Errorf("promtool check config: %v\n%s", err, out)
	}
}

type documentedService struct {
	image     string
	hostPorts []string
}

// documentedServices reads the services table of docs/DEPLOY.md's compose
// section: | `name` | `image` | host ports (`localhost:N`, or —) | … |.
func documentedServices(t *testing.T) map[string]documentedService {
	t.Helper()
	raw, err := os.ReadFile("../../docs/DEPLOY.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(raw)
	i := strings.Index(doc, "## Docker Compose")
	if i < 0 {
		t.Fatal("docs/DEPLOY.md has no '## Docker Compose' section")
	}
	section := doc[i+3:]
	if j := strings.Index(section, "\n## "); j >= 0 {
		section = section[:j]
	}
	row := regexp.MustCompile("^\\| `([a-z0-9-]+)` \\| `([^`]+)` \\| ([^|]*) \\|")
	hostPort := regexp.MustCompile("`localhost:([0-9]+)`")
	out := map[string]documentedService{}
	for _, line := range strings.Split(section, "\n") {
		m := row.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		d := documentedService{image: m[2]}
		for _, hp := range hostPort.FindAllStringSubmatch(m[3], -1) {
			d.hostPorts = append(d.hostPorts, "localhost:"+hp[1])
		}
		slices.Sort(d.hostPorts)
		out[m[1]] = d
	}
	if len(out) == 0 {
		t.Fatal("docs/DEPLOY.md's Docker Compose section has no services table")
	}
	return out
}

// checkDocumented: every environment variable of s appears in backquotes in
// the binary's doc (whose flag tables are held to its flags by its tests).
func checkDocumented(t *testing.T, s types.ServiceConfig, docPath string) {
	t.Helper()
	doc, err := os.ReadFile(docPath)
	if err != nil {
		t.Fatal(err)
	}
	for name := range s.Environment {
		if !strings.Contains(string(doc), "`"+name+"`") {
			t.Errorf("%s: env %s is not in %s", s.Name, name, docPath)
		}
	}
}

type envoyPorts struct {
	listener, admin int
	clusters        map[string]int
}

// envoyConfig reads deploy/envoy/envoy.yaml's listener, admin and cluster
// ports.
func envoyConfig(t *testing.T) envoyPorts {
	t.Helper()
	raw, err := os.ReadFile("../envoy/envoy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	type addr struct {
		SocketAddress struct {
			PortValue int `yaml:"port_value"`
		} `yaml:"socket_address"`
	}
	var cfg struct {
		StaticResources struct {
			Listeners []struct {
				Address addr `yaml:"address"`
			} `yaml:"listeners"`
			Clusters []struct {
				Name           string `yaml:"name"`
				LoadAssignment struct {
					Endpoints []struct {
						LbEndpoints []struct {
							Endpoint struct {
								Address addr `yaml:"address"`
							} `yaml:"endpoint"`
						} `yaml:"lb_endpoints"`
					} `yaml:"endpoints"`
				} `yaml:"load_assignment"`
			} `yaml:"clusters"`
		} `yaml:"static_resources"`
		Admin struct {
			Address addr `yaml:"address"`
		} `yaml:"admin"`
	}
	if err := yaml.Unmarshal(raw, &cfg); err != nil {
		t.Fatal(err)
	}
	e := envoyPorts{admin: cfg.Admin.Address.SocketAddress.PortValue, clusters: map[string]int{}}
	if l := cfg.StaticResources.Listeners; len(l) == 1 {
		e.listener = l[0].Address.SocketAddress.PortValue
	}
	for _, c := range cfg.StaticResources.Clusters {
		for _, ep := range c.LoadAssignment.Endpoints {
			for _, lb := range ep.LbEndpoints {
				e.clusters[c.Name] = lb.Endpoint.Address.SocketAddress.PortValue
			}
		}
	}
	if e.listener == 0 || e.admin == 0 || e.clusters["m1_authz"] == 0 || e.clusters["tool"] == 0 {
		t.Fatalf("deploy/envoy/envoy.yaml ports = %+v, want a listener, the admin and the m1_authz and tool clusters", e)
	}
	return e
}

// k8sImages are the container images of deploy/k8s/tool-pod.yaml.
func k8sImages(t *testing.T) []string {
	t.Helper()
	raw, err := os.ReadFile("../k8s/tool-pod.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var images []string
	for _, m := range regexp.MustCompile(`(?m)^\s*image:\s*(\S+)`).FindAllStringSubmatch(string(raw), -1) {
		images = append(images, m[1])
	}
	return images
}

// changelogVersion is the newest released version in CHANGELOG.md.
func changelogVersion(t *testing.T) string {
	t.Helper()
	raw, err := os.ReadFile("../../CHANGELOG.md")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^## \[([0-9]+\.[0-9]+\.[0-9]+)\]`).FindSubmatch(raw)
	if m == nil {
		t.Fatal("CHANGELOG.md has no released version")
	}
	return string(m[1])
}

func env0(s types.ServiceConfig, name string) string {
	if v := s.Environment[name]; v != nil {
		return *v
	}
	return ""
}

func flagValue(args []string, name string) string {
	for i, a := range args {
		if a == name && i+1 < len(args) {
			return args[i+1]
		}
		if v, ok := strings.CutPrefix(a, name+"="); ok {
			return v
		}
	}
	return ""
}

func mountOf(s types.ServiceConfig, target string) *types.ServiceVolumeConfig {
	for i, v := range s.Volumes {
		if v.Target == target {
			return &s.Volumes[i]
		}
	}
	return nil
}

func publishes(s types.ServiceConfig, published string, target int) bool {
	for _, p := range s.Ports {
		if p.Published == published && int(p.Target) == target {
			return true
		}
	}
	return false
}

func port(t *testing.T, addr string) string {
	t.Helper()
	i := strings.LastIndex(addr, ":")
	if i < 0 {
		t.Errorf("address %q has no port", addr)
		return ""
	}
	return addr[i+1:]
}

func mustAtoi(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Errorf("port %q: %v", s, err)
	}
	return n
}

func absPath(t *testing.T, rel string) string {
	t.Helper()
	p, err := filepath.Abs(rel)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func sortedKeys[V any](m map[string]V) []string {
	var keys []string
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
