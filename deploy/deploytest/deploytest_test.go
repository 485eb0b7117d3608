package deploytest

import "testing"

func TestPinnedImage(t *testing.T) {
	for image, want := range map[string]bool{
		"envoyproxy/envoy:v1.36.13":       true,
		"ghcr.io/m1-agent/m1:0.10.0":      true,
		"ghcr.io/m1-agent/m1:0.10.0-rc.1": true,
		"postgres:17.6":                   true,
		"envoyproxy/envoy:v1.36-latest":   false,
		"ghcr.io/m1-agent/m1:latest":      false,
		"ghcr.io/m1-agent/m1":             false,
		"redis:8":                         false,
		"redis:8.2":                       false,
		"postgres:17":                     false,
		"registry.example.com:5000/tool":  false,
		"registry.example.com/tool:1.0.0": true,
	} {
		if got := PinnedImage(image); got != want {
			t.Errorf("PinnedImage(%q) = %v, want %v", image, got, want)
		}
	}
}
