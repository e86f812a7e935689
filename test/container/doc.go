// Package container holds only tests: they build the wsrc-server container
// image with deploy/container/build.sh (the prebuilt way: a static binary
// on an empty base, nothing pulled) and check it as docs/deploy.md uses it:
//
//   - the image: user 65532, ports 4220 and 4221, the entry point, the bind
//     addresses in the environment, no shell, a few MB;
//   - without a configuration it refuses to serve its non-loopback ports
//     (exit status 2);
//   - with a configuration holding a user account and an agent token,
//     mounted read-only, it runs with a read-only root file system, no
//     capabilities and no-new-privileges on loopback-published ports: a
//     wsrc-agent with a simulated card connects with its token, `wsrc list`
//     with the user's token shows the card, and `docker stop` ends the
//     server with exit status 0.
//
// It needs a running Docker daemon: without one the tests skip, and with
// WSRC_CONTAINER_TEST=1 (make container-test) they fail instead. The agent
// and the CLI are built from this tree; everything talks over 127.0.0.1.
package container
