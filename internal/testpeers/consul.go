package testpeers

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/caddy-between/between/internal/testutil"
	"github.com/hashicorp/consul/api"
)

// ConsulBinary returns the Consul agent to test against: $BETWEEN_CONSUL, or
// the one scripts/consul.sh caches. Missing, it skips the test (fails when
// CI=true).
func ConsulBinary(t testing.TB) string {
	t.Helper()
	bin := os.Getenv("BETWEEN_CONSUL")
	if bin == "" {
		cache := os.Getenv("XDG_CACHE_HOME")
		if cache == "" {
			home, _ := os.UserHomeDir()
			cache = filepath.Join(home, ".cache")
		}
		bin = filepath.Join(cache, "between", "consul-v1.22.0", "consul")
	}
	if _, err := os.Stat(bin); err != nil {
		Missing(t, fmt.Sprintf("no consul agent at %s (build it with scripts/consul.sh or set BETWEEN_CONSUL): %v", bin, err))
	}
	return bin
}

// ConsulOptions configure StartConsul.
type ConsulOptions struct {
	// ACL turns ACLs on, default deny, with a management token
	// (Consul.Mgmt).
	ACL bool
	// CA, Cert and Key, when Cert is set, are the paths of a CA
	// certificate and the agent's certificate and key for an HTTPS port
	// that verifies clients against CA.
	CA, Cert, Key string
}

// Consul is a consul agent -dev run by a test.
type Consul struct {
	// HTTP is the host:port of the HTTP API.
	HTTP string
	// Unix is the path of the HTTP API's unix socket.
	Unix string
	// HTTPS is the host:port of the HTTPS API, when started with a Cert.
	HTTPS string
	// Mgmt is the management token, when ACLs are on.
	Mgmt string
	// API talks to the HTTP API with the management token.
	API *api.Client

	cmd    *exec.Cmd
	exited chan struct{}
	out    testutil.LockedBuffer
}

// StartConsul runs a dev agent on free loopback ports (DNS and gRPC off),
// its HTTP API also on a unix socket, and waits (30s at most) until it leads
// and, with ACLs, its management token resolves; the test's cleanup stops it.
func StartConsul(t testing.TB, opt ConsulOptions) *Consul {
	t.Helper()
	bin := ConsulBinary(t)
	dir := t.TempDir()
	a := &Consul{HTTP: fmt.Sprintf("127.0.0.1:%d", FreePort(t))}
	hcl := "disable_update_check = true\n"
	if opt.ACL {
		a.Mgmt = "5b4b4b8e-6f0c-4c39-9c57-3b5c2b8b0a01"
		hcl += fmt.Sprintf(`acl {
  enabled = true
  default_policy = "deny"
  tokens {
    initial_management = %q
    agent = %q
  }
}
`, a.Mgmt, a.Mgmt)
	}
	if opt.Cert != "" {
		a.HTTPS = fmt.Sprintf("127.0.0.1:%d", FreePort(t))
		hcl += fmt.Sprintf(`ports { https = %s }
tls {
  defaults {
    ca_file = %q
    cert_file = %q
    key_file = %q
  }
  https { verify_incoming = true }
}
`, port(a.HTTPS), opt.CA, opt.Cert, opt.Key)
	}
	// the HTTP API also on a unix socket (short path: sun_path is 108 bytes)
	sock, err := os.MkdirTemp("", "consul")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sock) })
	a.Unix = filepath.Join(sock, "http.sock")
	hcl += fmt.Sprintf("addresses { http = \"127.0.0.1 unix://%s\" }\n", a.Unix)
	cfg := filepath.Join(dir, "agent.hcl")
	if err := os.WriteFile(cfg, []byte(hcl), 0o600); err != nil {
		t.Fatal(err)
	}
	a.cmd = exec.Command(bin, "agent", "-dev", "-node", "between-test",
		"-bind", "127.0.0.1", "-client", "127.0.0.1",
		"-http-port", port(a.HTTP), "-dns-port", "-1", "-grpc-port", "-1", "-grpc-tls-port", "-1",
		"-server-port", strconv.Itoa(FreePort(t)), "-serf-lan-port", strconv.Itoa(FreePort(t)),
		"-serf-wan-port", "-1", "-data-dir", filepath.Join(dir, "data"), "-config-file", cfg)
	a.cmd.Stdout, a.cmd.Stderr = &a.out, &a.out
	if err := a.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	a.exited = make(chan struct{})
	go func() { a.cmd.Wait(); close(a.exited) }()
	t.Cleanup(func() {
		a.Kill()
		if t.Failed() {
			t.Logf("consul agent output (tail):\n%s", a.Output())
		}
	})
	client, err := api.NewClient(&api.Config{Address: a.HTTP, Token: a.Mgmt})
	if err != nil {
		t.Fatal(err)
	}
	a.API = client
	// ready: a leader, and (with ACLs) the management token resolves
	deadline := time.Now().Add(30 * time.Second)
	for {
		leader, err := client.Status().Leader()
		if err == nil && leader != "" {
			if !opt.ACL {
				break
			}
			if _, _, err = client.ACL().TokenReadSelf(nil); err == nil {
				break
			}
		}
		select {
		case <-a.exited:
			t.Fatalf("consul agent exited: %v\n%s", a.cmd.ProcessState, a.Output())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("consul agent not ready within 30s (last: %v)\n%s", err, a.Output())
		}
		time.Sleep(50 * time.Millisecond)
	}
	return a
}

func port(hostport string) string {
	_, p, _ := net.SplitHostPort(hostport)
	return p
}

// Output returns the last 40 lines of the agent's output.
func (a *Consul) Output() string {
	return tail(a.out.String(), 40)
}

// Kill stops the agent (SIGKILL to its PID) and waits for it.
func (a *Consul) Kill() {
	a.cmd.Process.Kill()
	<-a.exited
}

// Register registers (again) a service instance with the agent; an error
// fails the test.
func (a *Consul) Register(t testing.TB, reg *api.AgentServiceRegistration) {
	t.Helper()
	if err := a.API.Agent().ServiceRegister(reg); err != nil {
		t.Fatalf("registering %s: %v", reg.ID, err)
	}
}

// Deregister removes the service instance id; an error fails the test.
func (a *Consul) Deregister(t testing.TB, id string) {
	t.Helper()
	if err := a.API.Agent().ServiceDeregister(id); err != nil {
		t.Fatalf("deregistering %s: %v", id, err)
	}
}

// Token creates an ACL token with a policy of these rules; it returns the
// secret.
func (a *Consul) Token(t testing.TB, rules string) string {
	t.Helper()
	_, secret := a.TokenWithID(t, rules)
	return secret
}

// TokenWithID creates an ACL token with a policy of these rules; it returns
// the token's accessor ID and secret.
func (a *Consul) TokenWithID(t testing.TB, rules string) (id, secret string) {
	t.Helper()
	policy, _, err := a.API.ACL().PolicyCreate(&api.ACLPolicy{Name: fmt.Sprintf("p-%d", time.Now().UnixNano()), Rules: rules}, nil)
	if err != nil {
		t.Fatal(err)
	}
	tok, _, err := a.API.ACL().TokenCreate(&api.ACLToken{Policies: []*api.ACLTokenPolicyLink{{ID: policy.ID}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return tok.AccessorID, tok.SecretID
}
