from pointdr2.cli import main

raise SystemExit(main())
