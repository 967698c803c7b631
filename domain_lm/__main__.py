from domain_lm.cli import main

main()
