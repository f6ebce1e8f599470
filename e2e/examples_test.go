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
	"quickstart.caddyfile":   exerciseQuickstart,
	"sni-routing.caddyfile":  exerciseSNIRouting,
	"sni-backends.caddyfile": exerciseSNIBackends,
	"healthchecks.json":      exerciseHealthchecks,
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
				// caddy adapt: JSON out, no warning
				var stderr strings.Builder
				cmd := exec.Command(caddyBin, "adapt", "--config", path)
				cmd.Stderr = &stderr
				out, err = cmd.Output()
				if err != nil {
					t.Fatalf("caddy adapt: %v\n%s", err, tail(stderr.String(), 10))
				}
				if !json.Valid(out) {
					t.Errorf("caddy adapt printed no JSON:\n%s", out)
				}
				if strings.Contains(strings.ToLower(stderr.String()), "warn") {
					t.Errorf("caddy adapt warns:\n%s", stderr.String())
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
	c := startCaddyfile(t, text)
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
	// the handler is placed in the layer4 server the Caddyfile adapter named
	list := c.servers(t)
	if len(list) != 1 || list[0].Name != "quickstart" || len(list[0].Locations) != 1 ||
		list[0].Locations[0].Server != "srv0" || list[0].Locations[0].Route != 0 ||
		fmt.Sprint(list[0].Locations[0].Listen) != fmt.Sprintf("[between+tcp/127.0.0.1:%d]", ports[3000]) {
		t.Errorf("GET /between/servers: %+v", list)
	}
	if s := c.stats(t, "quickstart"); s.Total < 4 || len(s.Backends) != 2 {
		t.Errorf("quickstart stats after 4 requests: %+v", s)
	}
}

// exerciseSNIRouting: caddy-l4's tls matcher routes alpha.test and beta.test
// to a between handler each; another name matches no route.
func exerciseSNIRouting(t *testing.T, path string) {
	c := exerciseSNI(t, path, 8443, 9443, 9444)
	// (a request retried while the sites' certificates were being made counts too)
	waitFor(t, 2*time.Second, "the per-handler totals", func() bool {
		return c.stats(t, "alpha").Total >= 2 && c.stats(t, "beta").Total >= 1
	})
}

// exerciseSNIBackends: one between handler sends each client to the backend
// whose sni attribute matches; another name is refused.
func exerciseSNIBackends(t *testing.T, path string) {
	c := exerciseSNI(t, path, 8444, 9445, 9446)
	waitFor(t, 2*time.Second, "the handler's totals", func() bool {
		s := c.stats(t, "tls-router")
		return s.Total >= 3 && s.Refused >= 1
	})
	waitFor(t, 2*time.Second, "the refusal reason", func() bool {
		return strings.Contains(c.logs(), "no backend matches SNI gamma.test")
	})
}

// exerciseSNI runs an SNI example whose TLS listener is on lbPort and whose
// alpha.test and beta.test sites are on alphaPort and betaPort: alpha.test
// and beta.test reach their sites through the listener (alpha twice, beta
// once), and a client for gamma.test is not served.
func exerciseSNI(t *testing.T, path string, lbPort, alphaPort, betaPort int) *instance {
	orig, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	text, ports := rewritePorts(t, string(orig), lbPort, alphaPort, betaPort)
	// the site addresses name their ports without the host part
	for _, p := range []int{alphaPort, betaPort} {
		text = strings.ReplaceAll(text, fmt.Sprintf(".test:%d", p), fmt.Sprintf(".test:%d", ports[p]))
	}
	text = strings.Replace(text, "{\n", "{\n\tadmin ADMIN\n", 1)
	c := startCaddyfile(t, text)
	get := func(name string) (string, error) {
		client := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{
			DisableKeepAlives: true,
			TLSClientConfig:   &tls.Config{InsecureSkipVerify: true, ServerName: name},
			DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, network, fmt.Sprintf("127.0.0.1:%d", ports[lbPort]))
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
	if body, err := get("gamma.test"); err == nil {
		t.Errorf("a client for gamma.test was served: %q", body)
	}
	return c
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
	list := c.servers(t)
	if len(list) != 1 || list[0].Name != "web" || len(list[0].Locations) != 1 || list[0].Locations[0].Server != "web" {
		t.Errorf("GET /between/servers: %+v", list)
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
