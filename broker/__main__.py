from broker.ops.cli import main

raise SystemExit(main())
