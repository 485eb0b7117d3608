// Package envoy_test checks the Envoy configs in deploy/envoy by parsing them
// into go-control-plane's typed protos and validating them, since no Envoy
// binary runs here.
package envoy_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"testing"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	grpclogv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/grpc/v3"
	extauthzv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"gopkg.in/yaml.v3"
)

func loadBootstrap(t *testing.T, path string) *bootstrapv3.Bootstrap {
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
	var b bootstrapv3.Bootstrap
	if err := protojson.Unmarshal(js, &b); err != nil {
		t.Fatalf("%s does not parse as an Envoy v3 Bootstrap: %v", path, err)
	}
	if err := b.ValidateAll(); err != nil {
		t.Fatalf("%s: Validate: %v", path, err)
	}
	return &b
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
