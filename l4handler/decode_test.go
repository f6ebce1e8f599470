package l4handler

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func TestDecodeStrictNamesTheField(t *testing.T) {
	for _, tc := range []struct {
		name string
		json string
		want []string
	}{
		{"unknown field", `{"name":"x","retires":1}`, []string{"retires"}},
		{"bad duration", `{"client_idle_timeout":"5parsecs"}`, []string{"client_idle_timeout"}},
		{"bad duration among others", `{"name":"x","backend_idle_timeout":"1s","drain_timeout":"soon","retries":1}`, []string{"drain_timeout"}},
		{"retries as string", `{"retries":"2"}`, []string{"retries"}},
		{"max_connections as string", `{"max_connections":"many"}`, []string{"max_connections"}},
		{"name as number", `{"name":1}`, []string{"name"}},
		{"udp field unknown", `{"udp":{"max_response":1}}`, []string{"max_response"}},
		{"udp limit as string", `{"udp":{"max_requests":"3"}}`, []string{"udp", "max_requests"}},
		{"nested wrong type", `{"access":{"default":1}}`, []string{`field "access": field "default"`}},
		{"nested unknown field", `{"access":{"defualt":"deny"}}`, []string{"defualt"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := decodeStrict([]byte(tc.json), new(Handler))
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

func TestDecodeStrictValid(t *testing.T) {
	var s Handler
	err := json.Unmarshal([]byte(`{"name":"x","retries":0,"client_idle_timeout":"1m30s","drain_timeout":1000}`), &s)
	if err != nil {
		t.Fatal(err)
	}
	if s.Retries == nil || *s.Retries != 0 {
		t.Errorf("retries = %v, want explicit 0", s.Retries)
	}
	if time.Duration(s.ClientIdleTimeout) != 90*time.Second || s.DrainTimeout != 1000 {
		t.Errorf("durations = %v, %v", s.ClientIdleTimeout, s.DrainTimeout)
	}
}

// TestHandlerIdentity: the state key depends on the config, not on its
// white space or key order; an unnamed handler is named after its hash.
func TestHandlerIdentity(t *testing.T) {
	decode := func(js string) *Handler {
		t.Helper()
		var h Handler
		if err := json.Unmarshal([]byte(js), &h); err != nil {
			t.Fatal(err)
		}
		return &h
	}
	a := decode(`{"name":"x","retries":1,"discovery":{"kind":"static","static_list":["127.0.0.1:1"]}}`)
	b := decode(`{ "discovery" : {"static_list":["127.0.0.1:1"], "kind":"static"}, "retries":1 , "name":"x"}`)
	c := decode(`{"name":"x","retries":2,"discovery":{"kind":"static","static_list":["127.0.0.1:1"]}}`)
	if a.hash != b.hash {
		t.Errorf("white space or key order change the hash: %q vs %q", a.hash, b.hash)
	}
	if a.hash == c.hash {
		t.Errorf("a changed config keeps its hash %q", a.hash)
	}
	if len(a.hash) != 16 {
		t.Errorf("hash %q: want 16 hex digits", a.hash)
	}
}
