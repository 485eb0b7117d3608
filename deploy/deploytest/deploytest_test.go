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

func TestMarkdownAnchors(t *testing.T) {
	doc := "# Runbooks\n" +
		"## M1AuthzDown\n" +
		"### Rollback: image, schema, policy\n" +
		"## `m1 store restore` — from a backup\n" +
		"```sh\n# not a heading\n```\n" +
		"    # indented code, not a heading\n" +
		"#not a heading either\n" +
		"## Verify\n" +
		"## Verify\n" +
		"## Redis data loss ##\n"
	got := MarkdownAnchors(doc)
	for _, want := range []string{"runbooks", "m1authzdown", "rollback-image-schema-policy", "m1-store-restore--from-a-backup", "verify", "verify-1", "redis-data-loss"} {
		if !got[want] {
			t.Errorf("MarkdownAnchors: no %q in %v", want, got)
		}
	}
	for _, bad := range []string{"not-a-heading", "indented-code-not-a-heading", "not-a-heading-either"} {
		if got[bad] {
			t.Errorf("MarkdownAnchors: %q is not a heading", bad)
		}
	}
}
