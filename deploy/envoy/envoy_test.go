// Package envoy_test checks the Envoy configs in deploy/envoy by parsing them
// into go-control-plane's typed protos and validating them, since no Envoy
// binary runs here.
package envoy_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	grpclogv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/grpc/v3"
	extauthzv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"gopkg.in/yaml.v3"
)

func loadBootstrap(t *testing.T, path string) *bootstrapv3.Bootstrap {
	t.Helper()
	var b bootstrapv3.Bootstrap
	loadYAML(t, path, &b, "an Envoy v3 Bootstrap")
	if err := b.ValidateAll(); err != nil {
		t.Fatalf("%s: Validate: %v", path, err)
	}
	return &b
}

// loadYAML parses the YAML file path into m through protojson (strict:
// an unknown field fails).
func loadYAML(t *testing.T, path string, m proto.Message, what string) {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var doc any
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	js, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	if err := protojson.Unmarshal(js, m); err != nil {
		t.Fatalf("%s does not parse as %s: %v", path, what, err)
	}
}

func TestConfigsValidate(t *testing.T) {
	files, _ := filepath.Glob("*.yaml")
	if len(files) == 0 {
		t.Fatal("no Envoy configs found in deploy/envoy")
	}
	for _, f := range files {
		t.Run(f, func(t *testing.T) {
			b := loadBootstrap(t, f)
			checkExtAuthz(t, f, b)
			mtls := checkSidecarTLS(t, f, b)
			if strings.Contains(f, "mtls") && mtls == 0 {
				t.Errorf("%s: no cluster to m1-authz has a TLS transport socket", f)
			}
		})
	}
}

// checkExtAuthz holds every config to what M1 relies on (DESIGN §5, ENVOY.md).
func checkExtAuthz(t *testing.T, name string, b *bootstrapv3.Bootstrap) {
	found := 0
	for _, l := range b.GetStaticResources().GetListeners() {
		for _, fc := range l.GetFilterChains() {
			for _, f := range fc.GetFilters() {
				var hcm hcmv3.HttpConnectionManager
				if f.GetTypedConfig().UnmarshalTo(&hcm) != nil {
					continue
				}
				if a := hcm.GetCommonHttpProtocolOptions().GetHeadersWithUnderscoresAction(); a != corev3.HttpProtocolOptions_REJECT_REQUEST {
					t.Errorf("%s: headers_with_underscores_action = %v, want REJECT_REQUEST (x_m1_principal reaches CGI tools as x-m1-principal)", name, a)
				}
				for _, hf := range hcm.GetHttpFilters() {
					var ea extauthzv3.ExtAuthz
					if hf.GetTypedConfig().UnmarshalTo(&ea) != nil {
						continue
					}
					found++
					switch {
					case ea.GetFailureModeAllow():
						t.Errorf("%s: failure_mode_allow must be false", name)
					case ea.GetTransportApiVersion().String() != "V3":
						t.Errorf("%s: transport_api_version = %v, want V3", name, ea.GetTransportApiVersion())
					case ea.GetWithRequestBody() == nil:
						t.Errorf("%s: with_request_body missing: M1 needs the body to bind arguments", name)
					case ea.GetWithRequestBody().GetAllowPartialMessage():
						t.Errorf("%s: allow_partial_message must be false", name)
					case ea.GetGrpcService().GetTimeout().AsDuration() <= 0:
						t.Errorf("%s: set the ext_authz gRPC timeout explicitly", name)
					}
					if i := hcmFilterIndex(&hcm, hf.GetName()); i != 0 {
						t.Errorf("%s: ext_authz is filter %d; it must run first", name, i)
					}
					checkAccessLog(t, name, &hcm, ea.GetGrpcService().GetEnvoyGrpc().GetClusterName())
				}
			}
		}
	}
	if found == 0 {
		t.Errorf("%s: no ext_authz filter found", name)
	}
}

func hcmFilterIndex(hcm *hcmv3.HttpConnectionManager, name string) int {
	for i, f := range hcm.GetHttpFilters() {
		if f.GetName() == name {
			return i
		}
	}
	return -1
}

// sidecarPort is m1-authz's gRPC port in the pod (M1_GRPC_ADDR).
const sidecarPort = 9191

// toSidecar reports whether c's endpoints are m1-authz's gRPC port.
func toSidecar(c *clusterv3.Cluster) bool {
	for _, e := range c.GetLoadAssignment().GetEndpoints() {
		for _, lb := range e.GetLbEndpoints() {
			if lb.GetEndpoint().GetAddress().GetSocketAddress().GetPortValue() == sidecarPort {
				return true
			}
		}
	}
	return false
}

// checkSidecarTLS holds every transport socket of a cluster to m1-authz to
// mutual TLS as m1-authz with M1_TLS_CLIENT_CA_FILE wants it: a client
// certificate, the CA that signed the sidecar, the sidecar's SAN, HTTP/2.
// In one config, either every cluster to m1-authz has one or none does.
// It returns how many have one.
func checkSidecarTLS(t *testing.T, name string, b *bootstrapv3.Bootstrap) int {
	t.Helper()
	n, total := 0, 0
	for _, c := range b.GetStaticResources().GetClusters() {
		if !toSidecar(c) {
			continue
		}
		total++
		ts := c.GetTransportSocket()
		if ts == nil {
			continue
		}
		n++
		var up tlsv3.UpstreamTlsContext
		if err := ts.GetTypedConfig().UnmarshalTo(&up); err != nil {
			t.Errorf("%s: cluster %s: transport_socket is not an UpstreamTlsContext: %v", name, c.GetName(), err)
			continue
		}
		ctx := up.GetCommonTlsContext()
		if len(ctx.GetTlsCertificates()) == 0 && len(ctx.GetTlsCertificateSdsSecretConfigs()) == 0 {
			t.Errorf("%s: cluster %s: no client certificate: m1-authz with M1_TLS_CLIENT_CA_FILE refuses the handshake", name, c.GetName())
		}
		combined := ctx.GetCombinedValidationContext()
		validation := ctx.GetValidationContext()
		if combined != nil {
			validation = combined.GetDefaultValidationContext()
		}
		if ctx.GetValidationContextSdsSecretConfig() == nil && combined.GetValidationContextSdsSecretConfig() == nil && validation.GetTrustedCa() == nil {
			t.Errorf("%s: cluster %s: no trusted CA: the sidecar's certificate would not be verified", name, c.GetName())
		}
		if len(validation.GetMatchTypedSubjectAltNames()) == 0 {
			t.Errorf("%s: cluster %s: no match_typed_subject_alt_names: any certificate of the CA would pass for the sidecar", name, c.GetName())
		}
		if !slices.Contains(ctx.GetAlpnProtocols(), "h2") {
			t.Errorf("%s: cluster %s: alpn_protocols %v, want h2 (gRPC)", name, c.GetName(), ctx.GetAlpnProtocols())
		}
	}
	if n != 0 && n != total {
		t.Errorf("%s: %d of the %d clusters to m1-authz have TLS: m1-authz serves one port, TLS or not", name, n, total)
	}
	return n
}

// The mTLS variant is envoy.yaml with transport sockets to m1-authz and
// nothing else: a change to one that is not made to the other fails here.
func TestMTLSVariantMatchesPlain(t *testing.T) {
	plain, mtls := loadBootstrap(t, "envoy.yaml"), loadBootstrap(t, "envoy-mtls.yaml")
	for _, c := range mtls.GetStaticResources().GetClusters() {
		if toSidecar(c) {
			c.TransportSocket = nil
		}
	}
	if proto.Equal(plain, mtls) {
		return
	}
	ps, ms := plain.GetStaticResources(), mtls.GetStaticResources()
	byName := func(cs []*clusterv3.Cluster) map[string]*clusterv3.Cluster {
		m := map[string]*clusterv3.Cluster{}
		for _, c := range cs {
			m[c.GetName()] = c
		}
		return m
	}
	pc, mc := byName(ps.GetClusters()), byName(ms.GetClusters())
	for name, c := range pc {
		if !proto.Equal(c, mc[name]) {
			t.Errorf("cluster %s differs between envoy.yaml and envoy-mtls.yaml beyond the transport socket to m1-authz", name)
		}
	}
	for name := range mc {
		if pc[name] == nil {
			t.Errorf("cluster %s is in envoy-mtls.yaml only", name)
		}
	}
	if !slices.EqualFunc(ps.GetListeners(), ms.GetListeners(), func(a, b *listenerv3.Listener) bool { return proto.Equal(a, b) }) {
		t.Error("the listeners of envoy.yaml and envoy-mtls.yaml differ")
	}
	t.Error("envoy-mtls.yaml must be envoy.yaml plus transport sockets on the clusters to m1-authz")
}

// The SDS files envoy-mtls.yaml names exist under sds/, parse as
// DiscoveryResponses of valid Secrets, and hold the secrets it asks for.
func TestSDSFiles(t *testing.T) {
	const mount = "/etc/envoy-sds/" // where tool-pod-mtls.yaml mounts sds/
	b := loadBootstrap(t, "envoy-mtls.yaml")
	want := map[string]string{} // secret name -> file
	for _, c := range b.GetStaticResources().GetClusters() {
		var up tlsv3.UpstreamTlsContext
		if c.GetTransportSocket() == nil || c.GetTransportSocket().GetTypedConfig().UnmarshalTo(&up) != nil {
			continue
		}
		ctx := up.GetCommonTlsContext()
		configs := slices.Clone(ctx.GetTlsCertificateSdsSecretConfigs())
		if v := ctx.GetCombinedValidationContext().GetValidationContextSdsSecretConfig(); v != nil {
			configs = append(configs, v)
		}
		for _, sc := range configs {
			path := sc.GetSdsConfig().GetPathConfigSource().GetPath()
			if !strings.HasPrefix(path, mount) {
				t.Errorf("SDS secret %s: path %q, want a file under %s (sds/ mounted there)", sc.GetName(), path, mount)
				continue
			}
			want[sc.GetName()] = filepath.Join("sds", strings.TrimPrefix(path, mount))
		}
	}
	if len(want) < 2 {
		t.Fatalf("envoy-mtls.yaml names SDS secrets %v, want the client certificate and the CA", want)
	}
	for name, file := range want {
		var dr discoveryv3.DiscoveryResponse
		loadYAML(t, file, &dr, "an SDS DiscoveryResponse")
		found := false
		for _, r := range dr.GetResources() {
			var sec tlsv3.Secret
			if err := r.UnmarshalTo(&sec); err != nil {
				t.Errorf("%s: resource %s is not a Secret: %v", file, r.GetTypeUrl(), err)
				continue
			}
			if err := sec.ValidateAll(); err != nil {
				t.Errorf("%s: secret %s: %v", file, sec.GetName(), err)
			}
			if sec.GetName() != name {
				continue
			}
			found = true
			switch {
			case sec.GetTlsCertificate() != nil && sec.GetTlsCertificate().GetWatchedDirectory() == nil,
				sec.GetValidationContext() != nil && sec.GetValidationContext().GetWatchedDirectory() == nil:
				t.Errorf("%s: secret %s has no watched_directory: a rotated Kubernetes Secret would not be re-read", file, name)
			}
		}
		if !found {
			t.Errorf("%s holds no secret %s", file, name)
		}
	}
}

// checkAccessLog requires the tool route's access log to go to m1-authz
// (DESIGN §6): an http_grpc logger, v3, on the ext_authz cluster, logging
// the x-m1-decision-id request header beside the filter's metadata.
func checkAccessLog(t *testing.T, name string, hcm *hcmv3.HttpConnectionManager, authzCluster string) {
	t.Helper()
	for _, al := range hcm.GetAccessLog() {
		var g grpclogv3.HttpGrpcAccessLogConfig
		if al.GetTypedConfig().UnmarshalTo(&g) != nil {
			continue
		}
		cc := g.GetCommonConfig()
		switch {
		case cc.GetGrpcService().GetEnvoyGrpc().GetClusterName() != authzCluster:
			t.Errorf("%s: http_grpc access log goes to cluster %q, want m1-authz's %q", name, cc.GetGrpcService().GetEnvoyGrpc().GetClusterName(), authzCluster)
		case cc.GetTransportApiVersion() != corev3.ApiVersion_V3:
			t.Errorf("%s: access log transport_api_version = %v, want V3", name, cc.GetTransportApiVersion())
		case !slices.Contains(g.GetAdditionalRequestHeadersToLog(), "x-m1-decision-id"):
			t.Errorf("%s: access log must log the x-m1-decision-id request header", name)
		case al.GetFilter() != nil:
			t.Errorf("%s: the access log to m1-authz must not be filtered: every outcome counts", name)
		}
		return
	}
	t.Errorf("%s: no http_grpc access log to m1-authz on the tool route (tool outcomes, DESIGN §6)", name)
}
