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
		{"unknown field", `{"listen":["127.0.0.1:1"],"listne":["x"]}`, []string{"listne"}},
		{"bad duration", `{"client_idle_timeout":"5parsecs"}`, []string{"client_idle_timeout"}},
		{"bad duration among others", `{"listen":["127.0.0.1:1"],"backend_idle_timeout":"1s","drain_timeout":"soon","retries":1}`, []string{"drain_timeout"}},
		{"retries as string", `{"retries":"2"}`, []string{"retries"}},
		{"max_connections as string", `{"max_connections":"many"}`, []string{"max_connections"}},
		{"listen as string", `{"listen":"127.0.0.1:1"}`, []string{"listen"}},
		{"nested wrong type", `{"access":{"default":1}}`, []string{"access.default"}},
		{"nested unknown field", `{"access":{"defualt":"deny"}}`, []string{"defualt"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := decodeStrict([]byte(tc.json), new(Server))
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
	var s Server
	err := decodeStrict([]byte(`{"listen":["127.0.0.1:1"],"retries":0,"client_idle_timeout":"1m30s","drain_timeout":1000}`), &s)
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

func TestAppUnmarshalNamesTheServer(t *testing.T) {
	for _, tc := range []struct {
		name string
		json string
		want []string
	}{
		{"bad field", `{"servers":{"ok":{"retries":1},"x":{"retries":"two"}}}`, []string{`server "x"`, "retries"}},
		{"unknown field", `{"servers":{"x":{"nosuchfield":1}}}`, []string{`server "x"`, "nosuchfield"}},
		{"bad duration", `{"servers":{"x":{"client_idle_timeout":"later"}}}`, []string{`server "x"`, "client_idle_timeout"}},
		{"unknown app field", `{"servers":{},"sevrers":{}}`, []string{"sevrers"}},
		{"empty server name", `{"servers":{"":{}}}`, []string{"name"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var a App
			err := json.Unmarshal([]byte(tc.json), &a)
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

func TestAppUnmarshalKeysByConfig(t *testing.T) {
	load := func(js string) *App {
		t.Helper()
		var a App
		if err := json.Unmarshal([]byte(js), &a); err != nil {
			t.Fatal(err)
		}
		return &a
	}
	a := load(`{"servers":{"x":{"listen":["127.0.0.1:1"],"retries":1}}}`)
	b := load(`{"servers":{"x":{ "listen" : [ "127.0.0.1:1" ] , "retries":1 }}}`)
	c := load(`{"servers":{"x":{"listen":["127.0.0.1:1"],"retries":2}}}`)
	if a.Servers["x"].key != b.Servers["x"].key {
		t.Errorf("white space changes the state key: %q vs %q", a.Servers["x"].key, b.Servers["x"].key)
	}
	if a.Servers["x"].key == c.Servers["x"].key {
		t.Errorf("a changed server keeps its state key %q", a.Servers["x"].key)
	}
}
