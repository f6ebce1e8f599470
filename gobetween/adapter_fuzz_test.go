package gobetween

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/BurntSushi/toml"
)

// FuzzAdaptJSON: gobetween's JSON form is its TOML form with the same keys.
// Every TOML config (without TOML-only value types) that adapts gives the
// same Caddy JSON when written as JSON, and one that fails fails as JSON too;
// what adapts is a JSON object.
func FuzzAdaptJSON(f *testing.F) {
	files, _ := filepath.Glob("testdata/*.toml")
	if len(files) == 0 {
		f.Fatal("no TOML samples in testdata")
	}
	for _, p := range files {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte("[servers.a]\nbind = \"localhost:3000\"\nmax_connections = 1.0\n[servers.a.discovery]\nkind = \"static\"\nstatic_list = [\"127.0.0.1:1 weight=2\"]\n"))
	f.Fuzz(func(t *testing.T, body []byte) {
		doc := map[string]any{}
		if _, err := toml.Decode(string(body), &doc); err != nil || !jsonLike(doc) {
			return
		}
		asJSON, err := json.Marshal(doc)
		if err != nil {
			return // NaN or infinity
		}
		fromTOML, _, errTOML := Adapter{}.Adapt(body, nil)
		fromJSON, _, errJSON := Adapter{}.Adapt(asJSON, map[string]any{"filename": "gobetween.json"})
		if (errTOML == nil) != (errJSON == nil) {
			t.Fatalf("TOML error %v, JSON error %v\nTOML: %q\nJSON: %s", errTOML, errJSON, body, asJSON)
		}
		if errTOML != nil {
			return
		}
		if !bytes.Equal(fromTOML, fromJSON) {
			t.Fatalf("TOML and JSON forms adapt differently\nTOML: %q\n%s\nJSON: %s\n%s", body, fromTOML, asJSON, fromJSON)
		}
		var cfg map[string]any
		if err := json.Unmarshal(fromTOML, &cfg); err != nil {
			t.Fatalf("adapted config is not a JSON object: %v\n%s", err, fromTOML)
		}
	})
}

// jsonLike reports whether v holds only values JSON has too (no TOML dates
// or times).
func jsonLike(v any) bool {
	switch v := v.(type) {
	case map[string]any:
		for _, e := range v {
			if !jsonLike(e) {
				return false
			}
		}
	case []map[string]any:
		for _, e := range v {
			if !jsonLike(e) {
				return false
			}
		}
	case []any:
		for _, e := range v {
			if !jsonLike(e) {
				return false
			}
		}
	case string, int64, float64, bool:
	default:
		return false
	}
	return true
}
