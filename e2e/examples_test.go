package e2e

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// exercises run each example for real. Every file in examples/ must have one.
var exercises = map[string]func(t *testing.T, path string){
	"quickstart.caddyfile":  exerciseQuickstart,
	"sni-routing.caddyfile": exerciseSNIRouting,
	"healthchecks.json":     exerciseHealthchecks,
}

func TestExamples(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(repoRoot(), "examples", "*"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no examples found: %v", err)
	}
	for _, path := range files {
		name := filepath.Base(path)
		t.Run(name, func(t *testing.T) {
			adapter := "caddyfile"
			if strings.HasSuffix(name, ".json") {
				adapter = "json"
			}
			if adapter == "caddyfile" {
				orig, _ := os.ReadFile(path)
				out, err := exec.Command(caddyBin, "fmt", path).Output()
				if err != nil {
					t.Fatalf("caddy fmt: %v", err)
				}
				if string(out) != string(orig) {
					t.Errorf("caddy fmt changes %s; run caddy fmt --overwrite", name)
				}
			}
			args := []string{"validate", "--config", path}
			if adapter != "json" {
				args = append(args, "--adapter", adapter)
			}
			if out, err := exec.Command(caddyBin, args...).CombinedOutput(); err != nil {
				t.Fatalf("caddy validate: %v\n%s", err, tail(string(out), 10))
			}
			ex, ok := exercises[name]
			if !ok {
				t.Fatalf("example %s has no exercise in e2e/examples_test.go", name)
			}
			ex(t, path)
		})
	}
}

// rewritePorts replaces the example's fixed loopback ports with free ones.
func rewritePorts(t *testing.T, text string, ports ...int) (string, map[int]int) {
	m := map[int]int{}
	for _, p := range ports {
		m[p] = freePort(t)
		text = strings.ReplaceAll(text, fmt.Sprintf("127.0.0.1:%d", p), fmt.Sprintf("127.0.0.1:%d", m[p]))
	}
	return text, m
}

func exerciseQuickstart(t *testing.T, path string) {
	orig, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	text, ports := rewritePorts(t, string(orig), 3000, 3001, 3002)
	text = strings.Replace(text, "{\n", "{\n\tadmin ADMIN\n", 1)
	startCaddyfile(t, text)
	lb := fmt.Sprintf("http://127.0.0.1:%d/", ports[3000])
	// one TCP connection per request: Between balances connections
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 3 * time.Second}
	var got []string
	for range 4 {
		var body string
		waitFor(t, 5*time.Second, "the load balancer to answer", func() bool {
			resp, err := client.Get(lb)
			if err != nil {
				return false
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			body = string(b)
			return resp.StatusCode == 200
		})
		got = append(got, body)
	}
	if got[0] == got[1] || got[0] != got[2] || got[1] != got[3] {
		t.Errorf("quickstart answers %q: want the two backends in turn", got)
	}
	for _, b := range got[:2] {
		if b != "backend 1" && b != "backend 2" {
			t.Errorf("unexpected answer %q", b)
		}
	}
}

func exerciseSNIRouting(t *testing.T, path string) {
	orig, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	text, ports := rewritePorts(t, string(orig), 8443, 9443, 9444)
	// the site addresses name their ports without the host part
	for _, p := range []int{9443, 9444} {
		text = strings.ReplaceAll(text, fmt.Sprintf(".test:%d", p), fmt.Sprintf(".test:%d", ports[p]))
	}
	text = strings.Replace(text, "{\n", "{\n\tadmin ADMIN\n", 1)
	startCaddyfile(t, text)
	get := func(name string) (string, error) {
		client := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{
			DisableKeepAlives: true,
			TLSClientConfig:   &tls.Config{InsecureSkipVerify: true, ServerName: name},
			DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, network, fmt.Sprintf("127.0.0.1:%d", ports[8443]))
			},
		}}
		resp, err := client.Get("https://" + name + "/")
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return string(b), err
	}
	for _, name := range []string{"alpha", "beta", "alpha"} {
		var body string
		waitFor(t, 10*time.Second, name+" through the SNI router", func() bool {
			body, err = get(name + ".test")
			return err == nil
		})
		if body != name {
			t.Errorf("SNI %s.test answered %q", name, body)
		}
	}
	if _, err := get("gamma.test"); err == nil {
		t.Error("unexpected_hostname_strategy reject: a client for gamma.test was served")
	}
}

func exerciseHealthchecks(t *testing.T, path string) {
	orig, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	text, ports := rewritePorts(t, string(orig), 3100, 3101, 3102, 3103)
	var apps map[string]json.RawMessage
	if err := json.Unmarshal([]byte(text), &apps); err != nil {
		t.Fatal(err)
	}
	c := startCaddy(t, string(apps["apps"]))
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 3 * time.Second}
	lb := fmt.Sprintf("http://127.0.0.1:%d/", ports[3100])
	seen := map[string]int{}
	waitFor(t, 5*time.Second, "both healthy backends", func() bool {
		resp, err := client.Get(lb)
		if err != nil {
			return false
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		seen[string(b)]++
		return len(seen) >= 2
	})
	for body := range seen {
		if body != fmt.Sprintf("served by %d", ports[3101]) && body != fmt.Sprintf("served by %d", ports[3102]) {
			t.Errorf("unexpected answer %q", body)
		}
	}
	// the priority 2 backend has no server: the health check reports it down
	waitFor(t, 5*time.Second, "the missing backend to be reported down", func() bool {
		for _, b := range c.stats(t, "web").Backends {
			if b.Port == fmt.Sprint(ports[3103]) {
				return !b.Stats.Live
			}
		}
		return false
	})
}
