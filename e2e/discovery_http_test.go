package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

// pollSource is a discovery source whose published list the test changes:
// publish writes the backends (host:port) in the source's format, bad
// publishes an invalid answer and returns a part of the error the log must
// show.
type pollSource struct {
	publish func(addrs []string)
	bad     []func() (mention string)
}

// runPollScenario drives a between handler fed by src through appear,
// change, disappear and bad answers, and reports the propagation delays.
// start runs caddy with the handler named name listening on listen.
func runPollScenario(t *testing.T, kind string, src pollSource, start func(name, listen string) *instance) {
	a, b, c := nameBackend(t, "a"), nameBackend(t, "b"), nameBackend(t, "c")
	names := map[string]string{a.addr: "a", b.addr: "b", c.addr: "c"}
	name := "disc-" + kind
	listen := freeAddr(t)

	src.publish([]string{a.addr, b.addr})
	inst := start(name, listen)
	discWaitAnswers(t, listen, "a", "b")
	discWaitListed(t, inst, name, names, "a,b")

	var delays []string
	// change: c appears, a leaves, in one update
	changed := time.Now()
	src.publish([]string{b.addr, c.addr})
	delays = append(delays, "appear "+discUntilAnswer(t, listen, "c", changed).String())
	discOnlyAnswers(t, listen, 6, "b", "c")
	discWaitListed(t, inst, name, names, "b,c")

	// disappear: b leaves
	changed = time.Now()
	src.publish([]string{c.addr})
	discWaitListed(t, inst, name, names, "c")
	delays = append(delays, "disappear "+time.Since(changed).Round(time.Millisecond).String())
	discOnlyAnswers(t, listen, 4, "c")

	// bad answers: logged, the last good list keeps serving
	for _, bad := range src.bad {
		mention := bad()
		waitFor(t, 10*time.Second, "the discovery error mentioning "+mention, func() bool {
			return discLoggedFailure(inst, mention)
		})
		discOnlyAnswers(t, listen, 4, "c")
		discWaitListed(t, inst, name, names, "c")
	}

	// recovery: a good answer replaces the list again
	changed = time.Now()
	src.publish([]string{a.addr, c.addr})
	delays = append(delays, "after bad answers "+discUntilAnswer(t, listen, "a", changed).String())
	discOnlyAnswers(t, listen, 6, "a", "c")
	t.Logf("%s discovery, interval 1s: propagation delay (change at the source -> first connection to the new backend, or -> backend gone from the list): %s",
		kind, strings.Join(delays, ", "))
}

// discUntilAnswer asks listen until the backend want answers and returns
// the time since changed.
func discUntilAnswer(t *testing.T, listen, want string, changed time.Time) time.Duration {
	t.Helper()
	waitFor(t, 10*time.Second, "backend "+want+" to answer", func() bool {
		got, err := ask(listen)
		return err == nil && got == want
	})
	return time.Since(changed).Round(time.Millisecond)
}

// discWaitAnswers asks listen until every wanted backend has answered.
func discWaitAnswers(t *testing.T, listen string, want ...string) {
	t.Helper()
	seen := map[string]bool{}
	waitFor(t, 15*time.Second, fmt.Sprintf("answers from %v", want), func() bool {
		if got, err := ask(listen); err == nil {
			seen[got] = true
		}
		for _, w := range want {
			if !seen[w] {
				return false
			}
		}
		return true
	})
}

// discOnlyAnswers asks listen n times; every answer must be one of allowed.
func discOnlyAnswers(t *testing.T, listen string, n int, allowed ...string) {
	t.Helper()
	for range n {
		got, err := ask(listen)
		if err != nil {
			t.Fatalf("ask %s: %v", listen, err)
		}
		if !discContains(allowed, got) {
			t.Fatalf("answer %q, want one of %v", got, allowed)
		}
	}
}

func discContains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// discListed returns the names of the backends the handler lists in its
// stats, sorted and joined by commas.
func discListed(t *testing.T, inst *instance, server string, names map[string]string) string {
	t.Helper()
	var out []string
	for _, b := range statsBackends(t, inst, server) {
		n, ok := names[b.Host+":"+b.Port]
		if !ok {
			n = b.Host + ":" + b.Port
		}
		out = append(out, n)
	}
	sort.Strings(out)
	return strings.Join(out, ",")
}

// discWaitListed waits until the handler lists exactly want.
func discWaitListed(t *testing.T, inst *instance, server string, names map[string]string, want string) {
	t.Helper()
	var got string
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if got = discListed(t, inst, server, names); got == want {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("backends listed: %q, want %q", got, want)
}

// discLoggedFailure reports whether caddy logged a discovery failure whose
// error contains mention.
func discLoggedFailure(inst *instance, mention string) bool {
	for _, line := range strings.Split(inst.logs(), "\n") {
		if !strings.Contains(line, "discovery failed") {
			continue
		}
		var entry struct {
			Level, Msg, Error string
		}
		if json.Unmarshal([]byte(line), &entry) == nil && entry.Level == "warn" &&
			strings.HasPrefix(entry.Msg, "discovery failed") && strings.Contains(entry.Error, mention) {
			return true
		}
	}
	return false
}

// writeAtomic replaces the file at path with data, so a reader sees the old
// or the new content, never half of it.
func writeAtomic(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path+".tmp", []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		t.Fatal(err)
	}
}

// discHandler is the between handler config of the scenarios.
func discHandler(name, listen string, discovery map[string]any) map[string]any {
	return map[string]any{
		"listen":    []string{shared(listen)},
		"balance":   map[string]any{"policy": "roundrobin"},
		"discovery": discovery,
	}
}

// TestDiscoveryJSON: the json endpoint is a file served by a Caddy
// file_server site of the same caddy process (a real HTTP server outside the
// test); the test rewrites the file.
func TestDiscoveryJSON(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "backends.json")
	site := freeAddr(t)
	src := pollSource{
		publish: func(addrs []string) {
			var elems []map[string]any
			for i, a := range addrs {
				host, port, _ := strings.Cut(a, ":")
				// a nested document read with custom patterns
				elems = append(elems, map[string]any{"node": map[string]any{"ip": host}, "port": port, "w": i + 1})
			}
			if elems == nil {
				elems = []map[string]any{}
			}
			data, _ := json.Marshal(elems)
			writeAtomic(t, file, string(data))
		},
		bad: []func() string{
			func() string { writeAtomic(t, file, `[{"node":{"ip":"127.0.0.1"},"port":`); return "malformed" },
			func() string { writeAtomic(t, file, `{"node":{"ip":"127.0.0.1"},"port":1}`); return "want an array" },
			func() string { writeAtomic(t, file, `[{"node":{"ip":"127.0.0.1"}}]`); return "element [0]" },
			func() string { os.Remove(file); return "status 404" },
		},
	}
	runPollScenario(t, "json", src, func(name, listen string) *instance {
		l4 := betweenServers(map[string]any{name: discHandler(name, listen, map[string]any{
			"kind":                "json",
			"json_endpoint":       "http://" + site + "/backends.json",
			"json_host_pattern":   "node.ip",
			"json_port_pattern":   "(.port | tonumber)",
			"json_weight_pattern": "w",
			"interval":            "1s",
		})})
		apps, err := json.Marshal(map[string]any{
			"layer4": map[string]any{"servers": l4},
			"http": map[string]any{"servers": map[string]any{"files": map[string]any{
				"listen":          []string{site},
				"automatic_https": map[string]any{"disable": true},
				"routes":          []any{map[string]any{"handle": []any{map[string]any{"handler": "file_server", "root": dir}}}},
			}}},
		})
		if err != nil {
			t.Fatal(err)
		}
		return startCaddy(t, string(apps))
	})
}

// TestDiscoveryPlaintext: the plaintext endpoint is an HTTP server in the
// test; lines are read with a regular expression.
func TestDiscoveryPlaintext(t *testing.T) {
	var mu sync.Mutex
	status, body := http.StatusOK, ""
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		s, b := status, body
		mu.Unlock()
		w.WriteHeader(s)
		fmt.Fprint(w, b)
	}))
	t.Cleanup(srv.Close)
	set := func(s int, b string) {
		mu.Lock()
		status, body = s, b
		mu.Unlock()
	}
	src := pollSource{
		publish: func(addrs []string) {
			var lines []string
			for _, a := range addrs {
				host, port, _ := strings.Cut(a, ":")
				lines = append(lines, "# backend", "node "+host+" port "+port+" weight 1", "")
			}
			set(http.StatusOK, strings.Join(lines, "\n"))
		},
		bad: []func() string{
			func() string {
				set(http.StatusOK, "node 127.0.0.1 port 1 weight 1\n<html>oops</html>\n")
				return `line 2 "<html>oops</html>": does not match plaintext_regex_pattern`
			},
			func() string {
				set(http.StatusInternalServerError, "database locked")
				return "status 500 Internal Server Error: database locked"
			},
		},
	}
	runPollScenario(t, "plaintext", src, func(name, listen string) *instance {
		return startCaddy(t, between(map[string]any{name: discHandler(name, listen, map[string]any{
			"kind":                    "plaintext",
			"plaintext_endpoint":      srv.URL + "/backends.txt",
			"plaintext_regex_pattern": `^node (?P<host>\S+) port (?P<port>\d+) weight (?P<weight>\d+)$`,
			"interval":                "1s",
		})}))
	})
}
